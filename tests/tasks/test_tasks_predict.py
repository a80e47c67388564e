"""`uniformer predict` on an image (original-layout checkpoint) and on videos (training checkpoint)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from engine_helpers import tiny_uniformer, write_moving_videos
from PIL import Image

from uniformer.cli import main
from uniformer.tasks import load_recipe, train
from uniformer.tasks import open as open_checkpoint
from uniformer.tasks.classification import build_model


def _predict(capsys, args):
    code = main(["predict", *args])
    return code, capsys.readouterr().out


def test_predict_an_image_with_an_original_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model(tiny_uniformer("uniformer_small"), 3)
    ckpt = tmp_path / "image_model.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(image)
    opts = ["-o", "depths=[1,1,1,1]", "-o", "embed_dims=[16,32,64,128]", "-o", "head_dim=16"]
    code, out = _predict(capsys, ["--model", "uniformer_small", "--checkpoint", str(ckpt), "--labels", str(labels),
                                  "--topk", "3", "--json", "--data", "input_size=32", "--data", "short_side=40",
                                  "--dtype", "float32", *opts, str(image)])  # float32: compared below to 1e-5
    assert code == 0
    (result,) = json.loads(out)
    probs = [p["prob"] for p in result["predictions"]]
    assert result["error"] is None and sorted(p["label"] for p in result["predictions"]) == ["bird", "cat", "dog"]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    # the same numbers as the model on the data pipeline's test view of the image
    predictor = open_checkpoint(ckpt, model="uniformer_small", labels=str(labels), device="cpu",
                                data={"input_size": 32, "short_side": 40},
                                model_options={"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 64, 128],
                                               "head_dim": 16})
    from uniformer.data import build_dataset

    (tmp_path / "one.txt").write_text(f"{image} 0\n")
    view = predictor.task.data_view(predictor.model)
    item = build_dataset({**view, "test_list": str(tmp_path / "one.txt")}, "test")[0]
    with torch.no_grad():
        direct = predictor.model(item["input"]).softmax(-1).mean(0)
    assert result["predictions"][0]["prob"] == pytest.approx(direct.max().item(), abs=1e-5)
    assert result["predictions"][0]["label"] == ["cat", "dog", "bird"][direct.argmax().item()]

    code, out = _predict(capsys, ["--checkpoint", str(ckpt), str(image)])
    assert code == 2  # an original checkpoint does not say which model it holds


@pytest.fixture(scope="module")
def video_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = write_moving_videos(root / "videos", n_train=4, n_val=2)
    cfg = load_recipe({"task": "classification", "model": tiny_uniformer(), "data": data,
                       "train": {"epochs": 1, "threads": 1, "batch_size": 4, "num_workers": 0}})
    summary = train(cfg, root / "run", show_progress=False)
    return root, summary["checkpoint"]


def test_predict_videos_with_a_training_checkpoint(video_checkpoint, tmp_path, capsys):
    root, ckpt = video_checkpoint
    videos = [str(root / "videos" / "val_0.mp4"), str(root / "videos" / "val_1.mp4")]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    image = tmp_path / "still.jpg"
    Image.new("RGB", (32, 32)).save(image)
    code, out = _predict(capsys, ["--checkpoint", str(ckpt), "--json", "--topk", "1", "--data", "test_clips=2",
                                  *videos, str(broken), str(image), str(tmp_path / "missing.mp4")])
    assert code == 1  # some inputs failed
    results = json.loads(out)
    assert [r["input"] for r in results] == [*videos, str(broken), str(image), str(tmp_path / "missing.mp4")]
    for r in results[:2]:
        assert r["error"] is None and r["views"] == 2 and len(r["predictions"]) == 1
        assert r["predictions"][0]["label"] in ("moves_right", "moves_left")  # names recorded in the checkpoint
    assert "cannot read" in results[2]["error"]
    assert "video model" in results[3]["error"] and "image" in results[3]["error"]
    assert results[4]["error"] == "file not found"

    code, out = _predict(capsys, ["--checkpoint", str(ckpt), "--topk", "2", videos[0]])
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == videos[0] and lines[1].lstrip().startswith("1. ") and lines[2].lstrip().startswith("2. ")
