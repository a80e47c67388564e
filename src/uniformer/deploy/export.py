"""Export a UniFormer to ONNX or OpenVINO IR and check the exported graph against PyTorch.

ONNX goes through torch's TorchDynamo exporter: the legacy TorchScript exporter writes the channels-last
LayerNorm's permutation with a negative axis, which onnxruntime rejects. OpenVINO IR is converted from that
graph and saved in float32 (OpenVINO would otherwise halve the weights to float16).
"""
from __future__ import annotations

import importlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["FORMATS", "ExportError", "MissingExtraError", "require", "export_onnx", "export_openvino",
           "relative_error", "check_export_shape"]

FORMATS = ("onnx", "openvino")
OPSET = 18


class ExportError(ValueError):
    """A model, an input or an option that cannot be exported (or an export that does not match)."""


class MissingExtraError(ImportError):
    """An optional package of the `deploy` extra is not installed."""


def require(module: str, purpose: str):
    """Import an optional package of the `deploy` extra, or say what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{purpose} needs the '{module}' package: pip install 'uniformer[deploy]' "
                                f"(or pip install {module})") from None


def check_export_shape(model: nn.Module, input_shape: Sequence[int]) -> None:
    """Image models take C×H×W, video models C×T×H×W."""
    video = bool(getattr(model, "video", False))
    if len(input_shape) != (4 if video else 3):
        kind, expected = ("video", "CxTxHxW, e.g. 3x8x224x224") if video else ("image", "CxHxW, e.g. 3x224x224")
        raise ExportError(f"--input {'x'.join(map(str, input_shape))}: a {kind} model takes {expected}")


def relative_error(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """max |got - expected| / max |expected| over every output (the largest)."""
    if len(got) != len(expected):
        raise ExportError(f"the exported graph returns {len(got)} outputs, the model {len(expected)}")
    errors = []
    for g, e in zip(got, expected):
        if tuple(g.shape) != tuple(e.shape):
            raise ExportError(f"an exported output has shape {tuple(g.shape)}, the model's {tuple(e.shape)}")
        errors.append(((g.float() - e.float()).abs().max() / e.float().abs().max().clamp_min(1e-12)).item())
    return max(errors)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, dynamic_batch: bool = False) -> Path:
    """Write `model` (eval mode) as one ONNX file; `dynamic_batch` leaves the batch axis free."""
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if dynamic_batch:
        if example.shape[0] < 2:  # torch.export specialises axes of size 1
            example = example.expand(2, *example.shape[1:]).contiguous()
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                        input_names=["input"], **kwargs)
        except Exception as e:  # the exporter's own errors name the op that failed
            raise ExportError(f"{type(model).__name__} could not be exported to ONNX: {e}") from e
    program.save(str(path), external_data=False)
    return path


def export_openvino(model: nn.Module, example: torch.Tensor, path: str | os.PathLike,
                    dynamic_batch: bool = False) -> Path:
    """Write OpenVINO IR (`path` .xml plus its .bin), converted from the ONNX export, in float32."""
    ov = require("openvino", "OpenVINO export")
    path = Path(path).with_suffix(".xml")
    with tempfile.TemporaryDirectory(prefix="uniformer_export_") as tmp:
        onnx_path = export_onnx(model, example, Path(tmp) / "model.onnx", dynamic_batch)
        ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
    return path

