"""Which floating-point type inference runs in: float32, or bfloat16 autocast where it is fast.

bfloat16 pays off on a CPU only where it computes in bfloat16 (AVX512-BF16, AMX, Arm BF16): elsewhere oneDNN
emulates it and a UniFormer runs several times slower. `UNIFORMER_CPU_BF16=1|0` overrides the detected
capability (the test suite uses =1 to run the bfloat16 path on every machine).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch

__all__ = ["DTYPES", "CPU_BF16_ENV", "cpu_has_native_bfloat16", "cpu_detects_bfloat16", "resolve_dtype",
           "autocast_dtype"]

DTYPES = ("auto", "float32", "bfloat16", "float16")

# environment variable overriding the detected CPU bfloat16 capability: "1" (has it) or "0" (has not)
CPU_BF16_ENV = "UNIFORMER_CPU_BF16"

# /proc/cpuinfo flags of bfloat16 arithmetic units: x86 AVX512-BF16 and AMX, Arm (aarch64) BF16
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpuinfo_field(*keys: str) -> str | None:
    """The first /proc/cpuinfo line's value for one of `keys` (Linux; None elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in keys:
                return value.strip()
    return None


def _cpuinfo_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (x86 "flags", Arm "Features")."""
    return set((cpuinfo_field("flags", "features") or "").split())


def cpu_has_native_bfloat16() -> bool:
    """Whether CPU work takes the bfloat16 path: `UNIFORMER_CPU_BF16` (1 or 0) where it is set, else
    whether the CPU has bfloat16 arithmetic units (`cpu_detects_bfloat16`)."""
    value = os.environ.get(CPU_BF16_ENV, "").strip()
    if value in ("1", "0"):
        return value == "1"
    if value:
        raise ValueError(f"environment variable {CPU_BF16_ENV}={value!r}: expected 1 (treat the CPU as having "
                         "bfloat16 units), 0 (as not having them), or unset (detect)")
    return cpu_detects_bfloat16()


def cpu_detects_bfloat16() -> bool:
    """True where the CPU has bfloat16 arithmetic units, as torch's cpuinfo or /proc/cpuinfo report."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # torch's cpuinfo, where it has them
        supported = getattr(torch.cpu, probe, None)
        if supported is not None and supported():
            return True
    return bool(_cpuinfo_flags() & _BF16_FLAGS)


def resolve_dtype(requested: str, device: str | torch.device = "cpu") -> str:
    """'auto' → 'bfloat16' on GPUs that support it and on CPUs with bfloat16 units, else 'float32'
    ('float16' on older GPUs). An explicit 'bfloat16' on a CPU without those units warns."""
    if requested not in DTYPES:
        raise ValueError(f"dtype {requested!r}: expected one of {', '.join(DTYPES)}")
    device = torch.device(device)
    if requested == "auto":
        if device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if device.type == "cpu" and cpu_has_native_bfloat16() else "float32"
    if requested == "float16" and device.type == "cpu":
        raise ValueError("dtype float16 needs a GPU; use bfloat16 or float32 on CPUs")
    if requested == "bfloat16" and device.type == "cpu" and not cpu_has_native_bfloat16():
        warnings.warn("bfloat16 on this CPU will be slow: it has no bfloat16 arithmetic units (no AVX512-BF16, "
                      "AMX or Arm BF16), so every bfloat16 operation is emulated; float32 (--dtype auto) is "
                      "faster here", stacklevel=2)
    return requested


def autocast_dtype(dtype: str) -> torch.dtype | None:
    """The autocast type of a resolved dtype name (None: plain float32)."""
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
