"""`uniformer.optimize` computes the eager model's function; `dense` keeps autograd outside inference."""
from __future__ import annotations

import shutil

import pytest
import torch

import uniformer
from uniformer.models.layers import dense


def _relative_error(got, expected) -> float:
    if isinstance(expected, torch.Tensor):
        got, expected = [got], [expected]
    assert len(got) == len(expected)
    errors = []
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        errors.append(((a - b).abs().max() / b.abs().max()).item())
    return max(errors)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("uniformer_small", dict(aux_head=True), (2, 3, 64, 96)),
    ("uniformer_video_small", {}, (1, 3, 4, 32, 48)),
    ("uniformer_small", dict(features_only=True, num_classes=0, stage3="hybrid", window_size=3,
                             depths=(1, 1, 4, 1)), (1, 3, 80, 112)),
    ("uniformer_xxs", {}, (1, 3, 64, 64)),
])
def test_uncompiled_optimized_model_has_the_same_outputs(make_tiny, name, kwargs, shape):
    model = make_tiny(name, **kwargs)
    x = torch.randn(shape)
    optimized = uniformer.optimize(model, example=x, compile=False)
    assert optimized.compile_seconds == 0.0
    with torch.no_grad():
        expected = model(x)
    assert _relative_error(optimized(x), expected) < 1e-4


def _has_cxx_compiler() -> bool:
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@pytest.mark.skipif(not _has_cxx_compiler(), reason="torch.compile's inductor CPU backend needs a C++ compiler")
def test_compiled_video_model_has_the_same_outputs(make_tiny):
    """One tiny video model and one shape only: compiling takes seconds."""
    model = make_tiny("uniformer_video_small", depths=(1, 1, 1, 1))
    x = torch.randn(1, 3, 4, 32, 32)
    optimized = uniformer.optimize(model, example=x)
    assert optimized.compile_seconds > 0
    with torch.no_grad():
        assert _relative_error(optimized(x), model(x)) < 1e-4
    assert not any(p.requires_grad for p in optimized.parameters())
    assert any(p.requires_grad for p in model.parameters()), "optimize must not change the model it was given"


def test_dense_matches_linear_and_keeps_gradients():
    """oneDNN serves inference; with gradients needed it falls back to F.linear, so training works."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 16)
    weight, bias = torch.randn(24, 16, requires_grad=True), torch.randn(24, requires_grad=True)
    expected = torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias))
    with torch.no_grad():
        assert torch.allclose(dense(x, weight, bias, gelu=True), expected, atol=1e-5, rtol=1e-5)
    out = dense(x, weight, bias, gelu=True)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert weight.grad is not None and bias.grad is not None


def test_channels_last_training_step_has_gradients(make_tiny):
    model = make_tiny("uniformer_video_small", depths=(1, 1, 1, 1)).train()
    model.channels_last = True
    model(torch.randn(1, 3, 4, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.blocks1.parameters())


def test_dense_products_are_counted_as_flops():
    """`uniformer info` counts FLOPs with FlopCounterMode, which must see the oneDNN products too."""
    from torch.utils.flop_counter import FlopCounterMode

    x, weight = torch.randn(3, 10, 16), torch.randn(24, 16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        dense(x, weight, torch.zeros(24), gelu=True)
    assert counter.get_total_flops() == 2 * 30 * 16 * 24
