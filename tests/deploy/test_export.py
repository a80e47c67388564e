"""Export round trips: ONNX (onnxruntime) and OpenVINO IR against the PyTorch model, for image, video and
`features_only` models, through `export_model` (which checks the graph itself) and re-checked here.

Skipped only when the `deploy` extra (onnx, onnxscript, onnxruntime, openvino) is not installed.
"""
from __future__ import annotations

import pytest
import torch

import uniformer
from uniformer.deploy import ExportError, export_model, load_runtime

pytest.importorskip("onnx", reason="the deploy extra is not installed: pip install 'uniformer[deploy]'")
pytest.importorskip("onnxscript", reason="the deploy extra is not installed: pip install 'uniformer[deploy]'")
pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install 'uniformer[deploy]'")
pytest.importorskip("openvino", reason="the deploy extra is not installed: pip install 'uniformer[deploy]'")

RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}


def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _round_trip(model, shape, path, fmt, **kwargs):
    result = export_model(model, shape, path, fmt, **kwargs)
    assert result["relative_error"] <= 1e-4
    runtime = load_runtime(RUNTIME[fmt], result["path"], video=len(shape) == 4)
    x = torch.randn(2 if kwargs.get("dynamic_batch") else kwargs.get("batch_size", 1), *shape)
    with torch.no_grad():
        expected = _outputs(model(x))
    got = _outputs(runtime(x))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=1e-4 * e.abs().max().item(), rtol=0)
    return result


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_image_classifier_fused_dynamic_batch(make_tiny, tmp_path, fmt):
    model = uniformer.fuse(make_tiny(aux_head=True))
    result = _round_trip(model, (3, 64, 96), tmp_path / f"classifier.{fmt}", fmt, dynamic_batch=True)
    assert result["input"][0] == 3  # checked at another batch size than the one exported


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_video_classifier(make_tiny, tmp_path, fmt):
    _round_trip(make_tiny("uniformer_video_small"), (3, 8, 64, 64), tmp_path / f"video.{fmt}", fmt)


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("openvino", marks=pytest.mark.xfail(
    strict=True, raises=ExportError, reason="OpenVINO 2026.4 bug: its CPU plugin fuses the exported attention "
    "(MatMul, Softmax, MatMul and the head transposes) into one SDPA kernel and gets the transposes wrong when the "
    "token count equals the head count (here 2x2 windows = 4 tokens, 4 heads): the attention output is off by "
    "30-160 %, 2.8e-4 after the residual; onnxruntime matches the same ONNX graph to 1e-6; export_model refuses "
    "the graph"))])
def test_features_only_hybrid_window_backbone(make_tiny, tmp_path, fmt):
    """Stage 3 is 8×7 here: window 2 pads the width, and block 4 of the hybrid stage is global."""
    model = make_tiny(features_only=True, num_classes=0, depths=(1, 1, 4, 1), stage3="hybrid", window_size=2)
    assert [blk.window_size for blk in model.blocks3] == [2, 2, 2, None]
    _round_trip(model, (3, 128, 112), tmp_path / f"backbone.{fmt}", fmt)


def test_features_only_padded_window_backbone_in_openvino(make_tiny, tmp_path):
    """The padded windows themselves export exactly to OpenVINO: 4x4 windows (16 tokens, 4 heads) on the 8x7 map."""
    model = make_tiny(features_only=True, num_classes=0, depths=(1, 1, 4, 1), stage3="hybrid", window_size=4)
    _round_trip(model, (3, 128, 112), tmp_path / "backbone.xml", "openvino")


def test_light_model_with_token_evolution(make_tiny, tmp_path):
    _round_trip(uniformer.fuse(make_tiny("uniformer_xxs")), (3, 64, 64), tmp_path / "xxs.onnx", "onnx")


def test_wrong_input_rank_is_a_clear_error(make_tiny, tmp_path):
    with pytest.raises(ExportError, match="video model takes CxTxHxW"):
        export_model(make_tiny("uniformer_video_small"), (3, 64, 64), tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="image model takes CxHxW"):
        export_model(make_tiny(), (3, 4, 64, 64), tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="--format"):
        export_model(make_tiny(), (3, 64, 64), tmp_path / "x.trt", format="tensorrt")


def test_export_a_run_checkpoint_without_naming_its_model(tmp_path, capsys):
    """`uniformer export RUN/best.pt out.onnx`: the model and its test input come from the checkpoint."""
    import json

    from uniformer.cli import main
    from uniformer.engine.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, atomic_save
    from uniformer.tasks import load_recipe

    kwargs = {"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}
    cfg = load_recipe({"task": "classification", "model": {"name": "uniformer_small", "kwargs": kwargs},
                       "data": {"format": "image_list", "input_size": 64, "short_side": 72}})
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_small", num_classes=10, **kwargs).eval()
    run = atomic_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "classification",
                       "config": cfg, "meta": {"num_classes": 10, "classes": [str(i) for i in range(10)],
                                               "model_spec": {"name": "uniformer_small", "kwargs": kwargs}},
                       "model": model.state_dict(), "ema": None, "step": 1}, tmp_path / "best.pt")
    out = tmp_path / "img.onnx"
    assert main(["export", str(run), str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "uniformer_small" and result["input"] == [1, 3, 64, 64]
    session = load_runtime("onnxruntime", out, video=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(session(x), model(x), atol=1e-4, rtol=1e-4)
