"""uniformer.fuse: same outputs (relative error <= 1e-4) with BatchNorms, gammas and DPE residuals folded."""
import pytest
import torch
from torch import nn

import uniformer
from uniformer.models.fuse import InferenceMlp

TINY = dict(depths=(1, 2, 4, 1), embed_dims=(16, 32, 64, 128), num_classes=10)


def _randomize_norms(model):
    """Non-trivial BatchNorm statistics, norm affines and layer scales, so folding is really exercised."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
    return model


CASES = [
    ("uniformer_small", (2, 3, 96, 64), dict(head_dim=16)),
    ("uniformer_small_plus", (1, 3, 80, 80), dict(head_dim=16)),
    ("uniformer_base_ls", (1, 3, 64, 64), dict(head_dim=16)),
    ("uniformer_large_ls", (1, 3, 64, 64), dict(head_dim=16, aux_head=True)),
    ("uniformer_small", (1, 3, 136, 200), dict(head_dim=16, features_only=True, stage3="hybrid", window_size=3)),
    ("uniformer_video_small", (1, 3, 4, 64, 64), dict(head_dim=16)),
    ("uniformer_xs", (1, 3, 128, 96), dict(head_dim=16)),
    ("uniformer_video_xxs", (1, 3, 4, 64, 64), dict(head_dim=16, layer_scale=True)),
]


@pytest.mark.parametrize("name,shape,kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fused_model_matches(name, shape, kwargs):
    torch.manual_seed(0)
    model = _randomize_norms(uniformer.create_model(name, **{**TINY, **kwargs})).eval()
    fused = uniformer.fuse(model)
    x = torch.randn(shape)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    if isinstance(expected, list):
        assert len(got) == len(expected)
        pairs = list(zip(got, expected))
    else:
        pairs = [(got, expected)]
    for a, b in pairs:
        assert a.shape == b.shape
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-4


def test_fuse_removes_the_folded_ops():
    model = _randomize_norms(uniformer.create_model("uniformer_base_ls", **TINY)).eval()
    fused = uniformer.fuse(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not any(n.endswith("gamma_1") for n, _ in fused.named_parameters())
    assert all(m.identity_folded for m in fused.modules() if hasattr(m, "identity_folded"))
    assert sum(isinstance(m, InferenceMlp) for m in fused.modules()) == sum(TINY["depths"])
    assert fused.channels_last and not model.channels_last  # the original is left untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_fuse_rejects_other_modules():
    with pytest.raises(TypeError, match="UniFormer"):
        uniformer.fuse(nn.Linear(2, 2))
