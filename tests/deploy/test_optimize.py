"""`uniformer.optimize` computes the eager model's function with either backend and keeps the faster."""
from __future__ import annotations

import importlib.util
import shutil
import time

import pytest
import torch

import uniformer
from uniformer.deploy import optimize as optimize_module


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
    optimized = uniformer.optimize(model, example=x, dtype=dtype, backend="inductor")
    assert optimized.compile_seconds > 0 and optimized.dtype == dtype and optimized.backend == "inductor"
    # each attention input shape (stage 3: 2x2x2 tokens of 64 channels, stage 4: 2x1x1 of 128) was timed both ways
    assert sorted(optimized.attention_ms) == [(1, 2, 128), (1, 8, 64)]
    assert all(ms["sdpa"] > 0 and ms["explicit"] > 0 for ms in optimized.attention_ms.values())
    with torch.no_grad():
        out = optimized(x)
        assert out.dtype == torch.float32 and _relative_error(out, model(x)) < tolerance
    assert not any(p.requires_grad for p in optimized.parameters())
    assert any(p.requires_grad for p in model.parameters()), "optimize must not change the model it was given"


@pytest.mark.skipif(not _has_cxx_compiler(), reason="torch.compile's inductor CPU backend needs a C++ compiler")
def test_compiled_dense_backbone_returns_the_same_feature_maps(make_tiny):
    """The backbone of the dense tasks: a list of four maps out of the compiled graph (windowed stage 3)."""
    model = make_tiny(features_only=True, num_classes=0, stage3="hybrid", window_size=3, depths=(1, 1, 4, 1))
    x = torch.randn(1, 3, 80, 112)
    optimized = uniformer.optimize(model, example=x, dtype=torch.float32, backend="inductor")
    with torch.no_grad():
        got, expected = optimized(x), model(x)
    assert [f.shape for f in got] == [f.shape for f in expected] and len(got) == 4
    assert _relative_error(got, expected) < 1e-4


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


needs_openvino = pytest.mark.skipif(not importlib.util.find_spec("openvino"),
                                    reason="the deploy extra is not installed")


@needs_openvino
def test_openvino_backend_has_the_same_outputs_and_compiles_per_shape(make_tiny):
    model = make_tiny("uniformer_small", features_only=True, num_classes=0)
    x = torch.randn(2, 3, 64, 64)
    optimized = uniformer.optimize(model, example=x, dtype=torch.float32, backend="openvino")
    assert optimized.backend == "openvino" and optimized.compile_seconds > 0 and optimized.backend_ms == {}
    with torch.no_grad():
        assert _relative_error(optimized(x), model(x)) < 1e-4
        other = torch.randn(1, 3, 96, 64)
        assert _relative_error(optimized(other), model(other)) < 1e-4  # a new shape compiles its own graph
    assert sorted(optimized._run._graphs) == [(1, 3, 96, 64), (2, 3, 64, 64)]


@needs_openvino
@pytest.mark.parametrize("faster", [1, 2])
def test_openvino_backend_keeps_the_faster_number_of_streams(make_tiny, monkeypatch, faster):
    """A batch that splits over the threads is compiled as one stream and as one stream per thread, timed on the
    first input of that shape, and the faster kept (here by the patched timer's numbers); a batch that does not
    split is compiled once."""
    timings = {1: 5.0, 2: 7.0} if faster == 1 else {1: 9.0, 2: 4.0}
    timed = []

    def fake_timer(models, x, **kwargs):
        timed.append(sorted(models))
        return {n: timings[n] for n in models}

    monkeypatch.setattr(optimize_module, "_time_interleaved", fake_timer)
    torch.set_num_threads(2)  # (the fixture puts the tests' count back)
    model = make_tiny("uniformer_small")
    x = torch.randn(2, 3, 64, 64)
    optimized = uniformer.optimize(model, example=x, dtype=torch.float32, backend="openvino")
    assert timed == [[1, 2]] and optimized.streams_ms == {(2, 3, 64, 64): timings}
    assert optimized._run._graphs[(2, 3, 64, 64)].streams == faster
    with torch.no_grad():
        assert _relative_error(optimized(x), model(x)) < 1e-4
        single = torch.randn(1, 3, 64, 64)
        assert _relative_error(optimized(single), model(single)) < 1e-4
    assert timed == [[1, 2]] and optimized._run._graphs[(1, 3, 64, 64)].streams == 1


@needs_openvino
@pytest.mark.skipif(not _has_cxx_compiler(), reason="torch.compile's inductor CPU backend needs a C++ compiler")
@pytest.mark.parametrize("faster", ["inductor", "openvino"])
def test_auto_backend_keeps_the_faster_one(make_tiny, monkeypatch, faster):
    """With an example on the CPU both backends are compiled and timed; the faster one (here by the timings the
    patched timer reports) is returned, computing the same function, with what was measured."""
    timings = {"inductor": 5.0, "openvino": 7.0} if faster == "inductor" else {"inductor": 9.0, "openvino": 4.0}
    timed = []

    def fake_timer(models, x, **kwargs):
        if set(models) == {"sdpa", "explicit"}:  # inductor's attention forms, chosen first (see below)
            return {"sdpa": 1.0, "explicit": 2.0}
        timed.append(sorted(models))
        return {name: timings[name] for name in models}

    monkeypatch.setattr(optimize_module, "_time_interleaved", fake_timer)
    model = make_tiny("uniformer_xxs")
    x = torch.randn(1, 3, 64, 64)
    optimized = uniformer.optimize(model, example=x, dtype=torch.float32)
    assert timed == [["inductor", "openvino"]]
    assert optimized.backend == faster and optimized.backend_ms == timings
    with torch.no_grad():
        assert _relative_error(optimized(x), model(x)) < 1e-4


def test_each_attention_takes_the_form_measured_faster(make_tiny, monkeypatch):
    """`choose_attention` times SDPA against the explicit form per attention input shape and sets each module to
    the faster; both forms compute the same function."""
    from uniformer.models.layers import GlobalMHRA

    model = make_tiny("uniformer_video_small", depths=(1, 1, 2, 1))
    x = torch.randn(1, 3, 4, 32, 32)
    fused = uniformer.fuse(model)
    timed = []

    def fake_timer(forms, x, **kwargs):  # the explicit form wins on the stage-3 shape, SDPA on stage 4's
        timed.append(tuple(x.shape))
        return {"sdpa": 2.0, "explicit": 1.0} if x.shape[1] == 8 else {"sdpa": 1.0, "explicit": 3.0}

    monkeypatch.setattr(optimize_module, "_time_interleaved", fake_timer)
    measured = optimize_module.choose_attention(fused, x, torch.float32)
    assert sorted(timed) == sorted(measured) == [(1, 2, 128), (1, 8, 64)]  # each shape once
    forms = [(m.qkv.in_features, m.fused_attn) for m in fused.modules() if isinstance(m, GlobalMHRA)]
    assert forms == [(64, False), (64, False), (128, True)]
    with torch.no_grad():
        assert _relative_error(fused(x), model(x)) < 1e-4


def test_measured_timings_are_the_best_of_interleaved_rounds():
    calls = []

    class Model:
        def __init__(self, name, ms):
            self.name, self.ms = name, ms

        def __call__(self, x):
            calls.append(self.name)
            time.sleep(self.ms / 1000)

    best = optimize_module._time_interleaved({"a": Model("a", 2), "b": Model("b", 12)}, torch.zeros(1), rounds=3,
                                             warmup=2)
    assert calls == ["a", "b", "a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating order
    assert 2 <= best["a"] < best["b"] and best["b"] >= 12


def test_without_an_example_or_openvino_auto_is_inductor(make_tiny):
    model = make_tiny("uniformer_xxs")
    optimized = uniformer.optimize(model, dtype=torch.float32)  # nothing to time on: compiles at the first call
    assert optimized.backend == "inductor" and optimized.backend_ms == {} and optimized.compile_seconds == 0


def test_backend_errors_are_clear(make_tiny):
    model = make_tiny("uniformer_xxs")
    with pytest.raises(ValueError, match=r"optimize\(backend='tvm'\): expected one of auto, inductor, openvino"):
        uniformer.optimize(model, backend="tvm")
    with pytest.raises(ValueError, match="OpenVINO always compiles"):
        uniformer.optimize(model, compile=False, backend="openvino")
    assert uniformer.optimize(model, compile=False).backend == "eager"


@needs_openvino
def test_openvino_is_not_asked_for_bfloat16_on_a_cpu_without_it(make_tiny, monkeypatch):
    """Where OpenVINO lacks the BF16 capability, auto keeps inductor alone and an explicit request is refused."""
    import openvino

    class CoreWithoutBf16:
        def get_property(self, device, name):
            assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return ["FP32", "INT8"]

    monkeypatch.setattr(openvino, "Core", CoreWithoutBf16)
    reason = optimize_module._openvino_unusable(torch.device("cpu"), torch.bfloat16)
    assert reason is not None and "bfloat16 units" in reason
    assert optimize_module._openvino_unusable(torch.device("cpu"), torch.float32) is None
    with pytest.raises(ValueError, match=r"optimize\(backend='openvino'\): .*bfloat16 units"):
        uniformer.optimize(make_tiny("uniformer_xxs"), example=torch.randn(1, 3, 64, 64), dtype=torch.bfloat16,
                           backend="openvino")
