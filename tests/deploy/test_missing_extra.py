"""Without the `deploy` extra, export and runtimes say what to install."""
from __future__ import annotations

import sys

import pytest

from uniformer.cli import main
from uniformer.deploy import MissingExtraError
from uniformer.deploy.export import require


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(MissingExtraError, match=r"pip install 'uniformer\[deploy\]'"):
        require("openvino", "--runtime openvino")


def test_benchmark_runtime_flag_without_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SystemExit, match=r"onnxruntime.*uniformer\[deploy\]"):
        main(["benchmark", "uniformer_small", "--runtime", "onnxruntime", "--input", "3x64x64", "-o",
              "depths=[1,1,1,1]", "-o", "embed_dims=[16,32,64,128]", "-o", "head_dim=16"])
