"""Run exported UniFormer graphs through onnxruntime or OpenVINO as if they were PyTorch modules (torch tensors
in and out), and `export_model`: write an export and check it against PyTorch through its runtime.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .export import (
    FORMATS,
    ExportError,
    check_export_shape,
    export_onnx,
    export_openvino,
    relative_error,
    require,
)

__all__ = ["RUNTIMES", "RuntimeModel", "load_runtime", "export_model", "export_for_runtime", "keep_signal_stack"]

RUNTIMES = ("torch", "onnxruntime", "openvino")
OPENVINO_PRECISIONS = ("f32", "bf16", "default")


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Keep the calling thread's signal stack across a call that loads OpenVINO's CPU plugin.

    Each plugin instance installs its own alternate signal stack on the thread that loads it and, when destroyed,
    reinstates the stack it found if its own is still current, unmapping its own either way. Destroyed in the
    order they were made (two compiled models freed with the dict holding them), the last one reinstates a stack
    already unmapped, and the next signal caught with a Python handler (the SIGCHLD a DataLoader worker sends as
    it exits) kills the process with SIGSEGV. Giving the thread its own stack back at once leaves each plugin
    only its own to unmap.
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None)
    before = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        now = _SignalStack()
        libc.sigaltstack(None, ctypes.byref(now))
        if now.ss_sp != before.ss_sp or now.ss_flags != before.ss_flags:
            # SS_ONSTACK (1) is a state, not a request; SS_DISABLE (2 read, 4 to set) removes the stack
            restore = _SignalStack(None, 4, 0) if before.ss_flags & 2 else _SignalStack(before.ss_sp, 0, before.ss_size)
            if libc.sigaltstack(ctypes.byref(restore), None) != 0:  # the old stack too small for AMX state
                libc.sigaltstack(ctypes.byref(_SignalStack(None, 4, 0)), None)


class RuntimeModel(nn.Module):
    """An exported graph behind the call signature of a UniFormer module (CPU, float32 tensors in and out).

    `precision` (OpenVINO): the "f32" / "bf16" inference-precision hint, or "default" to let OpenVINO choose
    (bfloat16 on CPUs with bfloat16 units); `self.precision` is what the runtime reports it computes in.
    `streams` (OpenVINO): with more than one, the batch is split into that many equal parts (the graph's batch
    size), run at once on as many OpenVINO streams that share `threads` (its throughput hint), and joined.
    """

    def __init__(self, runtime: str, path: str | os.PathLike, video: bool, threads: int | None = None,
                 precision: str = "f32", streams: int = 1):
        super().__init__()
        self.runtime, self.path, self.video, self.streams = runtime, Path(path), video, streams
        threads = threads or torch.get_num_threads()
        if precision not in OPENVINO_PRECISIONS or (precision != "f32" and runtime != "openvino"):
            raise ValueError(f"precision {precision!r}: {runtime} computes in 'f32'; OpenVINO takes one of "
                             f"{', '.join(OPENVINO_PRECISIONS)}")
        if streams < 1 or (streams > 1 and runtime != "openvino"):
            raise ValueError(f"streams={streams}: {runtime} runs one stream; OpenVINO takes 1 or more")
        self.precision = "f32"
        if runtime == "onnxruntime":
            ort = require("onnxruntime", "--runtime onnxruntime")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
        elif runtime == "openvino":
            ov = require("openvino", "--runtime openvino")
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
            if streams > 1:
                config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=streams)
            if precision != "default":
                config["INFERENCE_PRECISION_HINT"] = precision
            with keep_signal_stack():
                self._compiled = ov.Core().compile_model(str(self.path), "CPU", config)
            self.precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
            self._requests = [self._compiled.create_infer_request() for _ in range(streams)] if streams > 1 else []
        else:
            raise ValueError(f"runtime {runtime!r}: expected onnxruntime or openvino")

    def forward(self, x: torch.Tensor):
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.runtime == "onnxruntime":
            outputs = self._session.run(None, {self._input: array})
        elif self._requests:
            if len(array) % self.streams:
                raise ValueError(f"{self.path}: a batch of {len(array)} does not split into {self.streams} streams")
            for request, part in zip(self._requests, np.split(array, self.streams)):
                request.start_async([part])
            for request in self._requests:
                request.wait()
            outputs = [np.concatenate([r.get_output_tensor(i).data for r in self._requests])
                       for i in range(len(self._compiled.outputs))]
        else:
            result = self._compiled(array)
            outputs = [result[out] for out in self._compiled.outputs]
        tensors = [torch.from_numpy(o) for o in outputs]
        return tensors[0] if len(tensors) == 1 else tensors

    def extra_repr(self) -> str:
        streams = f", streams={self.streams}" if self.streams > 1 else ""
        return f"runtime={self.runtime}, path={self.path}, video={self.video}, precision={self.precision}{streams}"


def load_runtime(runtime: str, path: str | os.PathLike, video: bool, threads: int | None = None,
                 precision: str = "f32", streams: int = 1) -> RuntimeModel:
    """An exported graph (`.onnx` for onnxruntime; `.xml` or `.onnx` for OpenVINO) as a callable model."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    return RuntimeModel(runtime, path, video, threads, precision, streams)


def export_for_runtime(model: nn.Module, runtime: str, input_shape: Sequence[int], workdir: str | os.PathLike,
                       dynamic_batch: bool = True, batch_size: int = 1, threads: int | None = None,
                       precision: str = "f32", streams: int = 1) -> RuntimeModel:
    """Export `model` into `workdir` for `runtime` and load it there (the same weights, another engine).
    `dynamic_batch=False` fixes the batch axis to `batch_size` (a static shape, as `optimize` compiles); with
    `streams` (OpenVINO), each of that many streams runs `batch_size // streams` of it."""
    if runtime not in RUNTIMES[1:]:
        raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if streams > 1 and (dynamic_batch or batch_size % streams):
        raise ValueError(f"streams={streams} splits a static batch (dynamic_batch=False) of a multiple of {streams}, "
                         f"not {'a dynamic one' if dynamic_batch else batch_size}")
    require(runtime, f"--runtime {runtime}")
    example = torch.randn(batch_size // streams, *input_shape)
    writer = export_onnx if runtime == "onnxruntime" else export_openvino
    path = writer(model.eval(), example, Path(workdir) / "model.onnx", dynamic_batch)  # OpenVINO: model.xml
    return load_runtime(runtime, path, video=len(input_shape) == 4, threads=threads, precision=precision,
                        streams=streams)


def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def export_model(model: nn.Module, input_shape: Sequence[int], path: str | os.PathLike, format: str = "onnx",
                 dynamic_batch: bool = False, batch_size: int = 1, tolerance: float = 1e-4) -> dict:
    """Export `model` for inputs of `input_shape` (no batch axis); raise `ExportError` where the exported graph
    differs from the model by more than `tolerance` (relative) on a random input. Returns what was checked."""
    if format not in FORMATS:
        raise ExportError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    check_export_shape(model, input_shape)
    model = model.eval()
    example = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    writer = export_onnx if format == "onnx" else export_openvino
    path = writer(model, example, path, dynamic_batch)
    runtime = load_runtime("onnxruntime" if format == "onnx" else "openvino", path, video=len(input_shape) == 4)
    check_batch = 3 if dynamic_batch else batch_size  # another batch size than exported, where it may vary
    x = torch.randn(check_batch, *input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _outputs(model(x))
    error = relative_error(_outputs(runtime(x)), expected)
    if not error <= tolerance:
        raise ExportError(f"{path}: the exported graph differs from the PyTorch model by {error:.2e} "
                          f"(relative; at most {tolerance:.0e} expected)")
    return dict(path=str(path), format=format, relative_error=error, input=[check_batch, *input_shape])
