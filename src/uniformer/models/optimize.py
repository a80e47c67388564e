"""The fastest PyTorch CPU inference path: `uniformer.fuse`, then `torch.compile` (inductor, frozen weights).

What each step buys on a CPU (measured on an AVX2 AMD EPYC, 2 threads, float32):

- `fuse` folds every BatchNorm, LayerNorm affine, layer scale and DPE residual into the adjacent
  weights and runs the network on channels-last maps, where the pointwise convolutions and FFNs are
  oneDNN matrix products (GELU fused into them).
- `torch.compile` with inductor and `freezing` turns the weights into constants and generates fused
  C++ loops for everything between the matrix products, attention and depthwise convolutions
  (LayerNorms, residual adds, layout copies, the average pooling), which eager PyTorch runs as
  separate memory-bound passes.

Precision: by default the machine's fastest accurate one, as OpenVINO's CPU plugin chooses its own:
bfloat16 autocast where the CPU computes in bfloat16 (AVX512-BF16, AMX, Arm BF16; or where
`UNIFORMER_CPU_BF16=1` says so), float32 elsewhere. In float32 every step computes the same function:
no approximate GELU or softmax, outputs within float32 rounding of the eager model (about 1e-6
relative). In bfloat16 the matrix products and convolutions round their inputs to bfloat16 while
normalisations and softmax stay float32 (autocast's rules): logits within about 1e-2 relative.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import time

import torch
from torch import nn

from .fuse import fuse

__all__ = ["optimize", "OptimizedModel"]

_logger = logging.getLogger(__name__)

# Inductor options of the compiled path. `freezing` makes the weights graph constants (constant
# folding, oneDNN weight layouts, and the oneDNN matmul/convolution lowerings need it); max-autotune
# stays off: it benchmarks kernel variants while compiling, which multiplies the compile time.
INDUCTOR_OPTIONS = {"freezing": True}


class _Autocast(nn.Module):
    """`model` under autocast to `dtype`, its outputs cast back to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor):
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.model(x)
        return [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()


class OptimizedModel(nn.Module):
    """An inference-only UniFormer: the fused model, compiled unless `compile=False` was asked.

    `compile_seconds` is how long the first (compiling) call took, 0 when not compiled; a new input
    shape compiles again (see `optimize`).
    """

    def __init__(self, fused: nn.Module, compiled: bool, dtype: torch.dtype = torch.float32):
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"OptimizedModel runs in torch.float32, bfloat16 or float16 (GPUs), not {dtype}")
        self.fused = fused
        self.compiled = compiled
        self.dtype = dtype
        self.compile_seconds = 0.0
        # Static shapes: one graph per input shape. Shape-generic graphs (`dynamic=True`, also what
        # torch.compile's default switches to at the second shape) fail on channels-last 3-D convolutions
        # in torch 2.14 (the oneDNN convolution's fake kernel reports other strides than it produces).
        # In bfloat16 the autocast region and the cast of the outputs to float32 are compiled with the model.
        run = fused if dtype == torch.float32 else _Autocast(fused, dtype)
        self._run = torch.compile(run, backend="inductor", dynamic=False) if compiled else run
        if compiled:  # loaded here, not at import: loading inductor takes seconds
            importlib.import_module("torch._inductor.config")

    def forward(self, x: torch.Tensor):
        # Frozen weights are compiled for gradient-free calls only. Inductor reads `freezing` from its
        # global config when it compiles (torch.compile's `options` do not reach that decision), so the
        # options are patched in around every call that may compile: the first one and any new shape.
        options = torch._inductor.config.patch(INDUCTOR_OPTIONS) if self.compiled else contextlib.nullcontext()
        with torch.no_grad(), options:
            return self._run(x)


def optimize(model: nn.Module, example: torch.Tensor | None = None, compile: bool = True,
             dtype: torch.dtype | str | None = None) -> OptimizedModel:
    """Return a fast inference-only copy of a UniFormer model (the original is left untouched).

    Args:
        model: a UniFormer or UniFormerLight model (classifier or `features_only` backbone).
        example: an input of the shape to be served. With `compile=True` the model is compiled on it
            right away (timed: `compile_seconds`, also logged), so that later calls run at full speed.
        compile: `torch.compile` the fused model (inductor backend, frozen weights). False: the fused
            model in eager mode, which needs no C++ compiler and no warm-up.
        dtype: None or "auto" (default): the machine's fastest accurate precision, bfloat16 autocast on
            CPUs with bfloat16 units (or `UNIFORMER_CPU_BF16=1`), float32 elsewhere; `torch.float32` /
            `torch.bfloat16` (or their names) force one. Outputs are float32 either way.

    Shapes: each input shape gets its own compiled graph, specialised to it; the first call with a new
    shape (another batch size, resolution or clip length) compiles again, which takes about as long as
    the first compile. Compile once, reuse many times: serve one shape (e.g. pad the last, smaller batch
    of a folder to the batch size and drop the padded outputs). After
    `torch._dynamo.config.recompile_limit` distinct shapes (8 by default) further shapes run the fused
    model in eager mode: still correct, slower.

    Accuracy: in float32 the same function as the eager model up to rounding (outputs agree to about
    1e-6 relative; tests check 1e-4); in bfloat16 within 2e-2 relative of the eager float32 model. The
    returned model is for inference only: it runs without gradients and its BatchNorm statistics are
    folded into the weights.
    """
    run_dtype = _resolve_dtype(dtype, example.device if example is not None else next(model.parameters()).device)
    fused = fuse(model)
    optimized = OptimizedModel(fused, compiled=compile, dtype=run_dtype)
    if compile and example is not None:
        start = time.perf_counter()
        optimized(example)
        optimized.compile_seconds = time.perf_counter() - start
        _logger.info("compiled %s for input %s (%s) in %.1f s", type(model).__name__, tuple(example.shape),
                     str(run_dtype).removeprefix("torch."), optimized.compile_seconds)
    return optimized


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """`optimize`'s dtype argument as torch.float32 or torch.bfloat16 (auto: `uniformer.precision`'s policy)."""
    from ..precision import resolve_dtype

    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype is None:
        name = "auto"
    elif isinstance(dtype, torch.dtype):
        if dtype not in names:
            raise ValueError(f"optimize(dtype={dtype}): expected torch.float32, torch.bfloat16 (torch.float16 on "
                             "GPUs) or None (auto)")
        name = names[dtype]
    elif dtype in ("auto", *names.values()):
        name = dtype
    else:
        raise ValueError(f"optimize(dtype={dtype!r}): expected torch.float32, torch.bfloat16, 'auto' or None")
    return {v: k for k, v in names.items()}[resolve_dtype(name, device)]
