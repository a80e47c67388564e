"""Deployment: export to ONNX / OpenVINO IR (checked against PyTorch) and run the exported graphs."""
from .export import FORMATS, ExportError, MissingExtraError, export_onnx, export_openvino
from .runtimes import RUNTIMES, RuntimeModel, export_for_runtime, export_model, load_runtime

__all__ = ["FORMATS", "RUNTIMES", "ExportError", "MissingExtraError", "RuntimeModel", "export_model", "export_onnx",
           "export_openvino", "export_for_runtime", "load_runtime"]
