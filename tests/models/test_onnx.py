"""ONNX export parity (onnxruntime against PyTorch).

The TorchDynamo-based exporter (`dynamo=True`) is used: with torch 2.15 the legacy TorchScript exporter
writes the channels-last LayerNorm's `movedim(-1, 1)` as a Transpose with a negative axis in `perm`
(`{0, -1, 1, 2}`), which onnxruntime rejects when it loads the graph.
"""
from __future__ import annotations

import warnings

import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _export_and_run(model, x, path) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=18, dynamo=True, verbose=False)
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def test_onnx_image_classifier(make_tiny, tmp_path):
    model = make_tiny(aux_head=True)
    x = torch.randn(2, 3, 64, 96)
    (got,) = _export_and_run(model, x, tmp_path / "classifier.onnx")
    with torch.no_grad():
        expected = model(x)
    assert got.shape == tuple(expected.shape)
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-4, rtol=0)


def test_onnx_hybrid_window_backbone(make_tiny, tmp_path):
    """Stage 3 is 6×5 here: window 2 pads the width, and block 4 of the hybrid stage is global."""
    model = make_tiny(features_only=True, num_classes=0, depths=(1, 1, 4, 1), stage3="hybrid", window_size=2)
    assert [blk.window_size for blk in model.blocks3] == [2, 2, 2, None]
    x = torch.randn(1, 3, 96, 80)
    got = _export_and_run(model, x, tmp_path / "backbone.onnx")
    with torch.no_grad():
        expected = model(x)
    assert len(got) == 4
    for a, b in zip(got, expected):
        assert a.shape == tuple(b.shape)
        assert torch.allclose(torch.from_numpy(a), b, atol=1e-4, rtol=0)
