"""The fastest inference path of a UniFormer: `uniformer.fuse`, then compiled by the faster backend on this
machine, `torch.compile` (inductor, frozen weights) or OpenVINO's CPU plugin (README, Deployment).

`fuse` folds norms, layer scales and DPE residuals into the weights and runs channels-last maps, where the
pointwise convolutions and FFNs are oneDNN matrix products; inductor with `freezing` then fuses what eager
PyTorch runs as separate memory-bound passes (LayerNorms, residual adds, layout copies, pooling); each global
attention first takes the form inductor runs faster on this CPU at its shape (`choose_attention`). Which
backend wins depends on the CPU (level on an AVX2 EPYC; OpenVINO faster on an AMX Xeon and on an AVX512-BF16
EPYC), so `optimize` times both on the example. Precision: bfloat16 where the CPU computes in it (as OpenVINO picks
its own), else float32; float32 outputs are within about 1e-6 relative of the eager model, bfloat16 ones
within about 1e-2 (matrix products and convolutions round their inputs, norms and softmax stay float32).
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..models.fuse import fuse
from ..models.layers import GlobalMHRA
from .runtimes import export_for_runtime, keep_signal_stack

__all__ = ["optimize", "OptimizedModel", "BACKENDS", "inference_variants"]

_logger = logging.getLogger(__name__)

# `freezing` makes the weights graph constants (the oneDNN matmul/convolution lowerings need it); max-autotune
# stays off: it benchmarks kernel variants while compiling, which multiplies the compile time.
INDUCTOR_OPTIONS = {"freezing": True}
# On the CPU the graph's calling code is compiled C++ too (`cpp_wrapper`) instead of Python that dispatches each of
# its ~150 oneDNN and attention calls through torch.ops: 1.04-1.2x faster, 4-9 s more to compile (UniFormer-S
# image and video, float32 and bfloat16, AMX Xeon; README, Performance). Not measured on GPUs: left off there.
CPU_INDUCTOR_OPTIONS = {**INDUCTOR_OPTIONS, "cpp_wrapper": True}

# "auto": the faster of the others on the example input, measured by `optimize`
BACKENDS = ("auto", "inductor", "openvino")


class _Autocast(nn.Module):
    """`model` under autocast to `dtype`, its outputs cast back to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor):
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.model(x)
        return [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()


def _in_precision(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model` itself in float32, else under autocast to `dtype` with float32 outputs."""
    return model if dtype == torch.float32 else _Autocast(model, dtype)


def split_streams(batch_size: int) -> int:
    """How many OpenVINO streams a batch runs on when split (one per thread, each taking an equal part), or 1
    where it does not split evenly over more than one thread."""
    threads = torch.get_num_threads()
    return threads if threads > 1 and batch_size % threads == 0 else 1


class _OpenVINOGraphs(nn.Module):
    """The fused model compiled by OpenVINO's CPU plugin, one compiled graph per input shape (static shapes,
    as inductor's graphs), in f32 or bf16 (OpenVINO's precision hint). Tensors in and out, float32, on the CPU.

    A batch that splits evenly over the threads is also compiled as one stream per thread, each running its part
    of the batch on one thread (no synchronisation between threads inside each operation); the faster of the two
    on the first input of that shape is kept (`streams_ms`: ms per call by number of streams, per input shape).
    UniFormer-S, 8x3x224x224, 2 threads, AMD EPYC with AVX512-BF16, interleaved: 2 streams 305.1 against
    319.7 ms in f32, 166.0 against 168.9 in bf16, and 162.8 against 192.5 in a process where the one-stream graph
    ran slow (README, Performance)."""

    def __init__(self, fused: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.fused = fused
        self.hint = "bf16" if dtype == torch.bfloat16 else "f32"
        self._graphs: dict[tuple[int, ...], nn.Module] = {}
        self.streams_ms: dict[tuple[int, ...], dict[int, float]] = {}

    def _compile(self, x: torch.Tensor):
        threads, split = torch.get_num_threads(), split_streams(len(x))
        counts = [1] + ([split] if split > 1 else [])
        # Through the ONNX export, as `uniformer export`: OpenVINO's graph from it ran 1.4x faster than the
        # one it converts from the PyTorch module directly (UniFormer-S, 8x3x224x224, bf16, AMX Xeon).
        with tempfile.TemporaryDirectory(prefix="uniformer_optimize_") as workdir:
            graphs = {n: export_for_runtime(self.fused, "openvino", tuple(x.shape[1:]), f"{workdir}/{n}",
                                            dynamic_batch=False, batch_size=len(x), threads=threads,
                                            precision=self.hint, streams=n) for n in counts}
        graph = graphs[1]
        if len(graphs) > 1:
            measured = self.streams_ms[tuple(x.shape)] = _time_interleaved(graphs, x)
            _logger.info("OpenVINO streams for input %s: %s", tuple(x.shape),
                         ", ".join(f"{n}: {ms:.1f} ms" for n, ms in measured.items()))
            graph = graphs[min(measured, key=measured.get)]  # one stream on a tie
        self._graphs[tuple(x.shape)] = graph
        return graph

    def forward(self, x: torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"the OpenVINO backend runs on the CPU; got an input on {x.device}")
        return (self._graphs.get(tuple(x.shape)) or self._compile(x))(x)


class OptimizedModel(nn.Module):
    """The fused model, compiled by `backend` ("inductor" or "openvino") unless `compiled` is False.

    `compile_seconds`: the first (compiling) call's time; `backend`: what runs ("eager" when not compiled);
    `backend_ms`: what `optimize` measured per backend when it chose; `attention_ms`: what it measured per
    attention form and input shape when it chose each attention's form for inductor (`choose_attention`);
    `streams_ms`: OpenVINO's time per number of streams, by input shape (see `_OpenVINOGraphs`)."""

    def __init__(self, fused: nn.Module, compiled: bool, dtype: torch.dtype = torch.float32,
                 backend: str = "inductor"):
        super().__init__()
        self.fused, self.compiled, self.dtype = fused, compiled, dtype
        self.backend = backend if compiled else "eager"
        self.compile_seconds = 0.0
        self.backend_ms: dict[str, float] = {}
        self.attention_ms: dict[tuple[int, ...], dict[str, float]] = {}
        if self.backend == "openvino":
            self._run = _OpenVINOGraphs(fused, dtype)
            return
        # Static shapes: one graph per input shape. Shape-generic graphs (`dynamic=True`, also what
        # torch.compile's default switches to at the second shape) fail on channels-last 3-D convolutions
        # in torch 2.14 (the oneDNN convolution's fake kernel reports other strides than it produces).
        # In bfloat16 the autocast region and the cast of the outputs to float32 are compiled with the model.
        run = _in_precision(fused, dtype)
        self._run = torch.compile(run, backend="inductor", dynamic=False) if compiled else run
        if compiled:  # loaded here, not at import: loading inductor takes seconds
            importlib.import_module("torch._inductor.config")

    @property
    def streams_ms(self) -> dict[tuple[int, ...], dict[int, float]]:
        return self._run.streams_ms if self.backend == "openvino" else {}

    def forward(self, x: torch.Tensor):
        # Frozen weights are compiled for gradient-free calls only. Inductor reads `freezing` from its
        # global config when it compiles (torch.compile's `options` do not reach that decision), so the
        # options are patched in around every call that may compile: the first one and any new shape.
        if self.backend == "inductor":
            options = torch._inductor.config.patch(CPU_INDUCTOR_OPTIONS if x.device.type == "cpu" else INDUCTOR_OPTIONS)
        else:
            options = contextlib.nullcontext()
        with torch.no_grad(), options:
            return self._run(x)


def optimize(model: nn.Module, example: torch.Tensor | None = None, compile: bool = True,
             dtype: torch.dtype | str | None = None, backend: str = "auto") -> OptimizedModel:
    """Return a fast inference-only copy of a UniFormer model (the original is left untouched).

    Args:
        example: an input of the shape to be served; with `compile` the model is compiled (and timed,
            `compile_seconds`) on it right away.
        compile: False runs the fused model eagerly (no C++ compiler, no warm-up).
        dtype: None/"auto": bfloat16 on CPUs with bfloat16 units (or `UNIFORMER_CPU_BF16=1`), else float32;
            `torch.float32` / `torch.bfloat16` (or their names) force one. Outputs are float32 either way.
        backend: "inductor", "openvino" (needs the `deploy` extra) or "auto": on a CPU with `openvino` and an
            `example`, both are compiled, timed on it (`backend_ms`) and the faster kept.

    Each input shape compiles its own graph (another batch size or resolution compiles again): serve one
    shape. With inductor, past `torch._dynamo.config.recompile_limit` shapes the fused model runs eagerly.
    """
    if backend not in BACKENDS:
        raise ValueError(f"optimize(backend={backend!r}): expected one of {', '.join(BACKENDS)}")
    device = example.device if example is not None else next(model.parameters()).device
    run_dtype = _resolve_dtype(dtype, device)
    fused = fuse(model)
    if not compile:
        if backend == "openvino":
            raise ValueError("optimize(backend='openvino', compile=False): OpenVINO always compiles; compile=False "
                             "runs the fused model in PyTorch eager mode (leave backend at 'auto')")
        return OptimizedModel(fused, compiled=False, dtype=run_dtype)
    candidates = [backend] if backend != "auto" else ["inductor"]
    if backend == "openvino" and (reason := _openvino_unusable(device, run_dtype)):
        raise ValueError(f"optimize(backend='openvino'): {reason}")
    if backend == "auto" and example is not None:
        if reason := _openvino_unusable(device, run_dtype):
            _logger.info("inductor only: %s", reason)
        else:
            candidates.append("openvino")
    built = {}
    for name in candidates:
        attention_ms = {}
        if name == "inductor" and example is not None and device.type == "cpu":
            # OpenVINO exports the model as it is; inductor's copy gets each attention's faster form
            graph = copy.deepcopy(fused) if len(candidates) > 1 else fused
            attention_ms = choose_attention(graph, example, run_dtype)
        else:
            graph = fused
        optimized = OptimizedModel(graph, compiled=True, dtype=run_dtype, backend=name)
        optimized.attention_ms = attention_ms
        if example is not None:
            start = time.perf_counter()
            optimized(example)
            optimized.compile_seconds = time.perf_counter() - start
            _logger.info("compiled %s with %s for input %s (%s) in %.1f s", type(model).__name__, name,
                         tuple(example.shape), str(run_dtype).removeprefix("torch."), optimized.compile_seconds)
        built[name] = optimized
    if len(built) == 1:
        return next(iter(built.values()))
    timings = _time_interleaved(built, example)
    chosen = built[min(timings, key=timings.get)]
    chosen.backend_ms = timings
    _logger.info("backend %s: %s", chosen.backend, ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()))
    return chosen


def choose_attention(fused: nn.Module, example: torch.Tensor, dtype: torch.dtype,
                     rounds: int = 5) -> dict[tuple[int, ...], dict[str, float]]:
    """Give each global attention of `fused` the form inductor runs faster on this machine at its input shape:
    `scaled_dot_product_attention` or the explicit product, softmax, product (`fused_attn=False`), each module
    compiled both ways and timed interleaved in `dtype` (ms per call, by (B, N, C) input shape; returned).

    Which wins depends on the CPU and the precision: on an AMD EPYC with AVX512-BF16 and no AMX, PyTorch's
    bfloat16 flash-attention kernel took 1.9x the explicit form's time on UniFormer-S's stage-3 shape (whole
    model 1.08x faster in bfloat16 on images, 1.17x on video), while in float32 SDPA was faster on video."""
    attentions = [m for m in fused.modules() if isinstance(m, GlobalMHRA)]
    inputs: dict[GlobalMHRA, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, args[0].detach().clone()))
             for m in attentions]
    try:
        with torch.no_grad():
            _in_precision(fused, dtype)(example)
    finally:
        for hook in hooks:
            hook.remove()
    by_shape: dict[tuple[int, ...], list[GlobalMHRA]] = {}
    for m, x in inputs.items():
        by_shape.setdefault(tuple(x.shape), []).append(m)
    measured, chosen = {}, {}
    for shape, modules in by_shape.items():
        forms = {}
        for form, sdpa in (("sdpa", True), ("explicit", False)):
            variant = copy.deepcopy(modules[0])
            variant.fused_attn = sdpa
            forms[form] = _in_precision(torch.compile(variant, backend="inductor", dynamic=False), dtype)
        # every attention module runs one code object (GlobalMHRA.forward), whose compiled entries (shape x form x
        # precision, over all `optimize` calls of the process) would pass Dynamo's default limit of 8 on models
        # with several attention shapes, and the timings past it would be of eager calls
        limit = max(torch._dynamo.config.recompile_limit, 64)
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=limit):
            measured[shape] = _time_interleaved(forms, inputs[modules[0]], rounds=rounds)
        chosen[shape] = min(measured[shape], key=measured[shape].get)  # "sdpa" on a tie
        for m in modules:
            m.fused_attn = chosen[shape] == "sdpa"
    _logger.info("attention forms: %s", ", ".join(
        f"{shape}: {chosen[shape]} (sdpa {ms['sdpa']:.2f} / explicit {ms['explicit']:.2f} ms)"
        for shape, ms in measured.items()))
    return measured


def _openvino_unusable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why OpenVINO's CPU plugin cannot run this model as asked, or None where it can."""
    if device.type != "cpu" or dtype == torch.float16:
        return f"OpenVINO's CPU plugin runs float32 or bfloat16 on the CPU, not {str(dtype).removeprefix('torch.')} " \
               f"on {device}"
    if importlib.util.find_spec("openvino") is None:
        return "the 'openvino' package is not installed: pip install 'uniformer[deploy]' (or pip install openvino)"
    if dtype == torch.bfloat16:
        with keep_signal_stack():
            capabilities = importlib.import_module("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in capabilities:
            return "OpenVINO computes in bfloat16 only on CPUs with bfloat16 units, which this one lacks"
    return None


def _time_interleaved(models: dict, x: torch.Tensor, rounds: int = 5, warmup: int = 2) -> dict:
    """Each model's best time (ms) for one call on `x`, over `rounds` rounds run in alternating order after
    `warmup` calls each, so that drifting machine load touches all alike. Five rounds, not three: with three
    single calls, noise picked inductor for the video model in float32 at 223 against 234 ms while OpenVINO ran
    it 1.08x faster over 50 calls (AMD EPYC, AVX512-BF16); each call costs 0.1-0.2 s on the S models."""
    names = list(models)
    for _ in range(warmup):
        for name in names:
            models[name](x)
    best = dict.fromkeys(names, float("inf"))
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            models[name](x)
            best[name] = min(best[name], 1000 * (time.perf_counter() - start))
    return best


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """`optimize`'s dtype argument as torch.float32 or torch.bfloat16 (auto: `uniformer.precision`'s policy)."""
    from ..precision import resolve_dtype

    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    name = "auto" if dtype is None else names.get(dtype, dtype)
    if name not in ("auto", *names.values()):
        raise ValueError(f"optimize(dtype={dtype!r}): expected torch.float32, torch.bfloat16 (torch.float16 on "
                         "GPUs), their names, 'auto' or None")
    return getattr(torch, resolve_dtype(name, device))


def inference_variants(model: nn.Module, input_shape: Sequence[int], workdir: str | os.PathLike,
                       batch_size: int = 1, bfloat16: bool = False) -> dict:
    """Label → zero-argument factory of (model, precision) for every way to run `model` for inference, in the
    order `uniformer benchmark --compare-runtimes` reports them, all at the static shape `optimize` compiles
    for (`batch_size` × `input_shape`); `bfloat16` adds the bfloat16 rows. A factory raises
    `MissingExtraError` when its runtime is not installed."""
    from ..profiling import set_reference_attention

    workdir = Path(workdir)
    example = torch.randn(batch_size, *input_shape)

    def exported(runtime: str, precision: str = "f32", streams: int = 1):
        runtime_model = export_for_runtime(fuse(model), runtime, input_shape,
                                           workdir / f"{runtime}_{precision}_{streams}", dynamic_batch=False,
                                           batch_size=batch_size, precision=precision, streams=streams)
        return runtime_model, runtime_model.precision

    def optimized(dtype: torch.dtype, backend: str = "auto"):
        precision = "bf16" if dtype == torch.bfloat16 else "f32"
        return optimize(model, example=example, dtype=dtype, backend=backend), precision

    variants = {
        "eager (reference)": lambda: (set_reference_attention(copy.deepcopy(model)).eval(), "f32"),
        "eager (SDPA)": lambda: (copy.deepcopy(model).eval(), "f32"),
        "fuse": lambda: (fuse(model), "f32"),
        "optimize (inductor)": lambda: optimized(torch.float32, "inductor"),
        "optimize": lambda: optimized(torch.float32),
        "onnxruntime": lambda: exported("onnxruntime"),
        "openvino": lambda: exported("openvino"),
    }
    # OpenVINO with one stream per thread, each on its part of the batch, as `optimize` may run it
    streams = split_streams(batch_size)
    if streams > 1:
        variants[f"openvino, {streams} streams"] = lambda: exported("openvino", "f32", streams)
    if bfloat16:
        variants["optimize (inductor) bf16"] = lambda: optimized(torch.bfloat16, "inductor")
        variants["optimize bf16"] = lambda: optimized(torch.bfloat16)
        variants["openvino default"] = lambda: exported("openvino", "default")
        if streams > 1:
            variants[f"openvino default, {streams} streams"] = lambda: exported("openvino", "default", streams)
    return variants
