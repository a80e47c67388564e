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
    optimized = uniformer.optimize(model, example=x, compile=False, dtype=torch.float32)
    assert optimized.compile_seconds == 0.0 and optimized.dtype == torch.float32
    with torch.no_grad():
        expected = model(x)
    assert _relative_error(optimized(x), expected) < 1e-4


def _has_cxx_compiler() -> bool:
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@pytest.mark.skipif(not _has_cxx_compiler(), reason="torch.compile's inductor CPU backend needs a C++ compiler")
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_compiled_video_model_has_the_same_outputs(make_tiny, dtype, tolerance):
    """One tiny video model and one shape only: compiling takes seconds. bfloat16 is emulated (slow,
    same numbers) where the CPU has no bfloat16 units."""
    model = make_tiny("uniformer_video_small", depths=(1, 1, 1, 1))
    x = torch.randn(1, 3, 4, 32, 32)
    optimized = uniformer.optimize(model, example=x, dtype=dtype)
    assert optimized.compile_seconds > 0 and optimized.dtype == dtype
    with torch.no_grad():
        out = optimized(x)
        assert out.dtype == torch.float32 and _relative_error(out, model(x)) < tolerance
    assert not any(p.requires_grad for p in optimized.parameters())
    assert any(p.requires_grad for p in model.parameters()), "optimize must not change the model it was given"


@pytest.mark.parametrize("override, expected", [("1", torch.bfloat16), ("0", torch.float32)])
def test_default_precision_follows_the_cpu(make_tiny, monkeypatch, override, expected):
    """dtype=None: bfloat16 where the CPU has bfloat16 units (simulated by UNIFORMER_CPU_BF16), else float32;
    an explicit dtype wins; the bfloat16 model's logits stay within 2e-2 of the eager float32 model's."""
    monkeypatch.setenv("UNIFORMER_CPU_BF16", override)
    model = make_tiny("uniformer_small", aux_head=True)
    x = torch.randn(2, 3, 64, 64)
    optimized = uniformer.optimize(model, example=x, compile=False)
    assert optimized.dtype == expected
    assert uniformer.optimize(model, compile=False, dtype=torch.float32).dtype == torch.float32
    assert uniformer.optimize(model, compile=False, dtype="bfloat16").dtype == torch.bfloat16
    with torch.no_grad():
        got, want = optimized(x), model(x)
    assert got.dtype == torch.float32
    assert _relative_error(got, want) < (1e-4 if expected == torch.float32 else 2e-2)


def test_unsupported_precisions_are_clear_errors(make_tiny):
    model = make_tiny("uniformer_xxs")
    with pytest.raises(ValueError, match="float16 needs a GPU"):
        uniformer.optimize(model, compile=False, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"optimize\(dtype=torch.int8\)"):
        uniformer.optimize(model, compile=False, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"optimize\(dtype='fp32'\)"):
        uniformer.optimize(model, compile=False, dtype="fp32")


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
