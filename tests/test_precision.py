"""The bfloat16 policy, with the CPU's capability mocked: bf16 autocast only where the CPU computes in bf16."""
from __future__ import annotations

import warnings

import pytest
import torch

from uniformer import precision
from uniformer.engine import runner


@pytest.fixture
def cpu_bf16(monkeypatch):
    """cpu_bf16(True/False) makes the CPU look like one with / without bfloat16 units."""

    def set_native(native: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: native)

    return set_native


def test_auto_is_float32_on_a_cpu_without_bf16_units(cpu_bf16):
    cpu_bf16(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_dtype("auto", "cpu") == "float32"
        assert runner.resolve_amp("auto", torch.device("cpu")) == "none"


def test_auto_is_bfloat16_on_a_cpu_with_bf16_units(cpu_bf16):
    cpu_bf16(True)
    assert precision.resolve_dtype("auto", "cpu") == "bfloat16"
    assert runner.resolve_amp("auto", torch.device("cpu")) == "bf16"


def test_explicit_bfloat16_warns_why_it_is_slow(cpu_bf16):
    cpu_bf16(False)
    with pytest.warns(UserWarning, match="no bfloat16 arithmetic units.*emulated"):
        assert precision.resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.warns(UserWarning, match="emulated"):
        assert runner.resolve_amp("bf16", torch.device("cpu")) == "bf16"
    cpu_bf16(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_dtype("bfloat16", "cpu") == "bfloat16"
        assert precision.resolve_dtype("float32", "cpu") == "float32"


def test_float16_and_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="float16 needs a GPU"):
        precision.resolve_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="expected one of"):
        precision.resolve_dtype("fp8", "cpu")


@pytest.mark.parametrize("flags,expected", [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True),
                                            ({"amx_tile", "amx_bf16"}, True), ({"asimd", "bf16"}, True)])
def test_capability_from_cpu_flags(monkeypatch, flags, expected):
    """Where torch's own probes say no (or do not exist), /proc/cpuinfo's flags decide."""
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: set(flags))
    assert precision.cpu_has_native_bfloat16() is expected


def test_capability_from_torch_probe(monkeypatch):
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(precision, "_cpuinfo_flags", set)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.cpu_has_native_bfloat16()


@pytest.mark.parametrize("detected", [False, True])
def test_environment_overrides_the_detected_capability(monkeypatch, detected):
    """UNIFORMER_CPU_BF16 is read at every call and wins over detection either way; unset, detection decides."""
    monkeypatch.setattr(precision, "cpu_detects_bfloat16", lambda: detected)
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    assert precision.cpu_has_native_bfloat16() is detected
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert precision.resolve_dtype("auto", "cpu") == "bfloat16"
    assert runner.resolve_amp("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert precision.resolve_dtype("auto", "cpu") == "float32"
    assert runner.resolve_amp("auto", torch.device("cpu")) == "none"
    monkeypatch.setenv(precision.CPU_BF16_ENV, "")
    assert precision.cpu_has_native_bfloat16() is detected


def test_a_bad_override_names_the_variable(monkeypatch):
    monkeypatch.setenv(precision.CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="UNIFORMER_CPU_BF16='yes'.*expected 1"):
        precision.resolve_dtype("auto", "cpu")


def test_bfloat16_logits_stay_within_two_percent():
    """Accuracy of the bf16 path does not depend on the machine (emulated or not)."""
    import uniformer

    torch.manual_seed(0)
    model = uniformer.fuse(uniformer.create_model("uniformer_small", depths=(1, 1, 2, 1),
                                                  embed_dims=(32, 64, 128, 256), head_dim=32).eval())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        with torch.autocast("cpu", dtype=precision.autocast_dtype("bfloat16")):
            got = model(x).float()
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 0.02
