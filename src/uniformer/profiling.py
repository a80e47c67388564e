"""Counting (parameters, multiply-adds) and timing (`uniformer benchmark`) of UniFormer models."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models.depthwise import use_shifted_taps
from .precision import autocast_dtype, cpuinfo_field

__all__ = ["count_params", "count_gflops", "parse_input", "default_input", "benchmark_model", "append_result",
           "set_reference_attention", "compare_models"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gflops(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Multiply-adds / 1e9 of one forward pass on a batch of one (as the paper counts; norms and activations
    not counted). Attention runs its explicit path: torch's counter covers fused attention kernels
    differently between versions and devices."""
    from .models.layers import GlobalMHRA

    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    attention = [m for m in model.modules() if isinstance(m, GlobalMHRA)]
    fused = [m.fused_attn for m in attention]
    set_reference_attention(model.eval())
    model.requires_grad_(False)  # expanded parameters under no_grad confuse the module tracker
    try:
        x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for m, f in zip(attention, fused):
            m.fused_attn = f
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)
    return counter.get_total_flops() / 2e9


def parse_input(text: str) -> tuple[int, ...]:
    """'3x224x224' or '3x16x224x224' → a shape without the batch dimension."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ValueError(f"--input {text!r}: expected CxHxW or CxTxHxW, e.g. 3x224x224 or 3x16x224x224")
    return shape


def default_input(model: nn.Module) -> tuple[int, ...]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    c, h, w = cfg.get("input_size", (3, 224, 224))
    if getattr(model, "video", False):
        frames = next((int(n.split("=")[1]) for n in cfg.get("notes") or () if n.startswith("frames=")), 16)
        return (c, frames, h, w)
    return (c, h, w)


def set_reference_attention(model: nn.Module) -> nn.Module:
    """Form attention matrices explicitly, as the original code does (the eager reference)."""
    from .models.layers import GlobalMHRA

    for m in model.modules():
        if isinstance(m, GlobalMHRA):
            m.fused_attn = False
    return model


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset: allocated GPU memory on CUDA, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that host clocks time it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_model(model: nn.Module, input_shape: Sequence[int], batch_size: int = 8, device: str = "cpu",
                    dtype: str = "float32", channels_last: bool = False, compile: bool = False, train: bool = False,
                    warmup: int = 3, iters: int = 10) -> dict:
    """Time `iters` forward passes (or training steps) after `warmup`; returns throughput and latency.

    Compiled inference on a GPU runs 3-D depthwise convolutions as shifted taps (`use_shifted_taps`), which
    inductor fuses: cuDNN's 3-D depthwise kernels are the bottleneck there (2.8x on an H200, longer compile)."""
    dev = torch.device(device)
    amp = autocast_dtype(dtype)
    model = model.to(dev).train(train)
    shifted_taps = use_shifted_taps(model) if compile and not train and dev.type == "cuda" else 0
    x = torch.randn(batch_size, *input_shape, device=dev)
    if channels_last:
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        model = model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    step_model = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    autocast = torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step():
        if train:
            with autocast:
                out = step_model(x)
                loss = sum(o.float().mean() for o in out) if isinstance(out, (tuple, list)) else out.float().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast:
                step_model(x)

    for _ in range(warmup):
        step()
    synchronize(dev)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        synchronize(dev)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return dict(
        mode="train" if train else "inference", batch_size=batch_size, input=list(input_shape), device=str(dev),
        dtype=dtype, channels_last=channels_last, compile=compile, shifted_taps_convolutions=shifted_taps,
        throughput=batch_size / median, latency_ms=1000 * median,
        latency_p90_ms=1000 * sorted(times)[int(0.9 * (len(times) - 1))],
        peak_memory_mb=peak_memory_mb(dev), iters=iters, warmup=warmup,
    )


@torch.inference_mode()
def compare_models(models: dict, x: torch.Tensor, rounds: int = 6, iters: int = 3, warmup: int = 1) -> dict:
    """Time several callables on the same input, interleaved round by round (drifting machine load touches them
    alike); a model's time is its best round's median, its relative_error against the first model's outputs."""
    reference = None
    results = {}
    for label, model in models.items():
        for _ in range(warmup):
            out = model(x)
        out = out if isinstance(out, (tuple, list)) else [out]
        if reference is None:
            reference = out
        error = max(((o.float() - r.float()).abs().max() / r.float().abs().max()).item()
                    for o, r in zip(out, reference))
        results[label] = dict(relative_error=error, round_ms=[])
    for _ in range(rounds):
        for label, model in models.items():
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
            results[label]["round_ms"].append(1000 * statistics.median(times))
    for r in results.values():
        r["latency_ms"] = min(r["round_ms"])
        r["throughput"] = x.shape[0] * 1000 / r["latency_ms"]
    return results


def environment() -> dict:
    cpu = cpuinfo_field("model name") or platform.processor() or platform.machine()
    return dict(torch=torch.__version__, cpu=cpu, threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                time=time.strftime("%Y-%m-%dT%H:%M:%S"))


def append_result(path: str | os.PathLike, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
