"""Inference fusion keeps the outputs of every model family."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import uniformer
from uniformer.models import DynamicPositionEmbedding


@pytest.mark.parametrize("name, kwargs, shape", [
    ("uniformer_small", dict(aux_head=True), (2, 3, 64, 96)),
    ("uniformer_small_plus", {}, (2, 3, 65, 63)),
    ("uniformer_large_ls", dict(embed_dims=(16, 32, 64, 128), aux_head=True), (1, 3, 64, 64)),
    ("uniformer_small", dict(features_only=True, num_classes=0, stage3="hybrid", window_size=3,
                             depths=(1, 1, 4, 1)), (1, 3, 80, 112)),
    ("uniformer_video_small", {}, (1, 3, 4, 32, 48)),
    ("uniformer_xxs", {}, (2, 3, 64, 64)),
    ("uniformer_video_xxs", dict(layer_scale=True), (1, 3, 4, 64, 64)),
])
def test_fused_model_has_the_same_outputs(make_tiny, name, kwargs, shape):
    model = make_tiny(name, **kwargs)
    with torch.no_grad():
        for m in model.modules():  # non-trivial layer scales, so that folding them matters
            for g in ("gamma_1", "gamma_2"):
                if isinstance(getattr(m, g, None), nn.Parameter):
                    getattr(m, g).uniform_(0.5, 1.5)
    x = torch.randn(shape)
    fused = uniformer.fuse(model)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    if isinstance(expected, torch.Tensor):
        expected, got = [expected], [got]
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert all(m.identity_folded for m in fused.modules() if isinstance(m, DynamicPositionEmbedding))
    assert not any(p.requires_grad for p in fused.parameters())
    assert not any(m.identity_folded for m in model.modules() if isinstance(m, DynamicPositionEmbedding))


def test_fuse_refuses_other_models():
    with pytest.raises(TypeError, match="UniFormer"):
        uniformer.fuse(nn.Linear(2, 2))


@pytest.mark.parametrize("name, kwargs, shape", [
    ("uniformer_small", {}, (2, 3, 65, 97)),
    ("uniformer_small", dict(features_only=True, num_classes=0, stage3="window", window_size=3), (1, 3, 80, 112)),
    ("uniformer_video_small", {}, (1, 3, 4, 32, 48)),
    ("uniformer_xxs", {}, (1, 3, 64, 64)),
])
def test_channels_last_execution_has_the_same_outputs(make_tiny, name, kwargs, shape):
    """`channels_last` (what fuse switches on) changes the memory layout only, not the numbers."""
    model = make_tiny(name, **kwargs)
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x)
        model.channels_last = True
        got = model(x)
    if isinstance(expected, torch.Tensor):
        expected, got = [expected], [got]
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
