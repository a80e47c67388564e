"""`uniformer.tasks.open`: one read of the weights file from an original checkpoint, a run checkpoint or a
.safetensors to predictions; what it refuses, and `predict` on a folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch
from engine_helpers import tiny_uniformer
from PIL import Image

import uniformer
from uniformer.cli import main
from uniformer.engine.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, atomic_save
from uniformer.models.checkpoint import save_safetensors
from uniformer.tasks import load_recipe
from uniformer.tasks import open as open_checkpoint
from uniformer.tasks.classification import build_model

TINY_KWARGS = {"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}
TINY = [arg for k, v in TINY_KWARGS.items() for arg in ("-o", f"{k}={json.dumps(v)}")]
VIEW = ["--data", "input_size=32", "--data", "short_side=40"]


@pytest.fixture
def reads(monkeypatch):
    """How often each file was read by torch.load or safetensors (the reader's boundary)."""
    counts: dict[str, int] = {}
    real_load, real_open = torch.load, safetensors.safe_open

    def load(f, *args, **kwargs):
        key = str(Path(f).resolve()) if isinstance(f, str | Path) else repr(f)
        counts[key] = counts.get(key, 0) + 1
        return real_load(f, *args, **kwargs)

    def safe_open(f, *args, **kwargs):
        key = str(Path(f).resolve())
        counts[key] = counts.get(key, 0) + 1
        return real_open(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    monkeypatch.setattr(safetensors, "safe_open", safe_open)
    return counts


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def _run_checkpoint(path: Path, ema: bool = False) -> Path:
    cfg = load_recipe({"task": "classification", "model": tiny_uniformer("uniformer_small"),
                       "data": {"format": "image_list", "input_size": 32, "short_side": 40}})
    torch.manual_seed(0)
    model = build_model(cfg["model"], 3, for_training=False)
    meta = {"num_classes": 3, "classes": ["cat", "dog", "bird"],
            "model_spec": {"name": cfg["model"]["name"], "kwargs": cfg["model"]["kwargs"]}}
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "classification", "config": cfg,
             "meta": meta, "model": model.state_dict(),
             "ema": {"module": {k: v + 1 for k, v in model.state_dict().items()}} if ema else None, "step": 1}
    return atomic_save(state, path)


def test_predict_from_an_original_checkpoint_reads_it_once(tmp_path, photo, reads, capsys):
    torch.manual_seed(0)
    original = tmp_path / "original.pth"
    torch.save({"model": uniformer.create_model("uniformer_small", num_classes=1000, **TINY_KWARGS).state_dict()},
               original)
    assert main(["predict", "--model", "uniformer_small.in1k", "--checkpoint", str(original), *TINY, *VIEW,
                 "--json", str(photo)]) == 0
    assert reads == {str(original.resolve()): 1}
    (result,) = json.loads(capsys.readouterr().out)
    assert result["error"] is None and result["predictions"][0]["label"] != "class_0"  # ImageNet names


def test_predict_from_a_run_checkpoint_and_a_safetensors_reads_each_once(tmp_path, photo, reads, capsys):
    run = _run_checkpoint(tmp_path / "best.pt")
    assert main(["predict", "--checkpoint", str(run), "--json", str(photo)]) == 0
    assert reads == {str(run.resolve()): 1}
    (from_run,) = json.loads(capsys.readouterr().out)
    assert {p["label"] for p in from_run["predictions"]} == {"cat", "dog", "bird"}

    opened = open_checkpoint(run, device="cpu")
    picture = opened.task.draw(np.zeros((2, 32, 32, 3), np.uint8), from_run["predictions"], "photo.jpg")
    assert picture.size[0] > 300 and picture.size[1] > 100  # Task.draw: frames above the top classes
    flat = tmp_path / "weights.safetensors"
    save_safetensors(opened.model, flat, "uniformer_small", TINY_KWARGS)
    reads.clear()
    assert main(["predict", "--model", "uniformer_small", "--checkpoint", str(flat), *TINY, *VIEW, "--json",
                 str(photo)]) == 0
    assert reads == {str(flat.resolve()): 1}
    (from_flat,) = json.loads(capsys.readouterr().out)
    # the same weights, the same test view: the same probabilities (class names are not in the file)
    assert [p["index"] for p in from_flat["predictions"]] == [p["index"] for p in from_run["predictions"]]
    np.testing.assert_allclose([p["prob"] for p in from_flat["predictions"]],
                               [p["prob"] for p in from_run["predictions"]], rtol=1e-5)


def test_ema_weights_and_misfits_through_the_one_loader(tmp_path):
    run = _run_checkpoint(tmp_path / "last.pt", ema=True)
    plain, ema = open_checkpoint(run, device="cpu"), open_checkpoint(run, use_ema=True, device="cpu")
    first = next(iter(plain.model.state_dict()))
    assert torch.equal(ema.model.state_dict()[first], plain.model.state_dict()[first] + 1)
    other = _run_checkpoint(tmp_path / "other.pt")
    state = torch.load(other, weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("head.")}
    state["model"]["extra.weight"] = torch.zeros(1)
    atomic_save(state, other)
    with pytest.raises(ValueError, match=r"other\.pt does not fit the model: missing keys 2 \(head\.bias, "
                                         r"head\.weight\), unexpected keys 1 \(extra\.weight\)"):
        open_checkpoint(other, device="cpu")


class Payload:  # a pickled object inside a run checkpoint: never unpickled
    pass


def test_a_pickled_payload_in_a_run_checkpoint_is_refused_saying_what_and_why(tmp_path, photo, capsys):
    path = tmp_path / "tampered.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "classification",
                "payload": Payload()}, path)
    assert main(["predict", "--checkpoint", str(path), str(photo)]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "Payload" in err and "never executes pickled code" in err
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "uniformer convert" not in err


def test_predict_on_a_folder_predicts_every_image_in_it(tmp_path, photo, capsys):
    run = _run_checkpoint(tmp_path / "best.pt")
    folder = tmp_path / "album"
    folder.mkdir()
    for name in ("b.png", "a.jpg"):
        Image.open(photo).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    assert main(["predict", "--checkpoint", str(run), "--json", str(folder)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [Path(r["input"]).name for r in results] == ["a.jpg", "b.png"]
    assert all(r["error"] is None for r in results)
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "empty")]) == 2
    assert "no image or video files" in capsys.readouterr().err


def test_an_original_classifier_with_its_recipe(tmp_path, photo, reads, capsys):
    import yaml

    torch.manual_seed(0)
    original = tmp_path / "original.pth"
    model = uniformer.create_model("uniformer_small", num_classes=3, **TINY_KWARGS)
    torch.save({"model": model.state_dict()}, original)
    (tmp_path / "names.txt").write_text("cat\ndog\nbird\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "classification", "model": tiny_uniformer("uniformer_small"),
                                      "data": {"format": "image_list", "root": str(tmp_path),
                                               "class_names": "names.txt", "input_size": 32, "short_side": 40}}))
    assert main(["predict", "--config", str(recipe), "--checkpoint", str(original), "--json", str(photo)]) == 0
    assert reads == {str(original.resolve()): 1}
    (result,) = json.loads(capsys.readouterr().out)
    assert {p["label"] for p in result["predictions"]} == {"cat", "dog", "bird"}
    same = open_checkpoint(original, model="uniformer_small", model_options=TINY_KWARGS, device="cpu",
                           labels=str(tmp_path / "names.txt"), data={"input_size": 32, "short_side": 40})
    same = same.predict([str(photo)])
    assert [p["label"] for p in same[0]["predictions"]] == [p["label"] for p in result["predictions"]]
    np.testing.assert_allclose([p["prob"] for p in same[0]["predictions"]],
                               [p["prob"] for p in result["predictions"]], rtol=1e-5)


def test_eval_reads_the_checkpoint_once(tmp_path, reads, capsys):
    from engine_helpers import write_moving_videos

    data = write_moving_videos(tmp_path / "videos", n_train=2, n_val=2)
    cfg = load_recipe({"task": "classification", "model": tiny_uniformer(), "data": data,
                       "train": {"epochs": 1, "batch_size": 2, "num_workers": 0, "threads": 1}})
    torch.manual_seed(0)
    model = build_model(cfg["model"], 2, for_training=False)
    meta = {"num_classes": 2, "classes": ["moves_right", "moves_left"],
            "model_spec": {"name": cfg["model"]["name"], "kwargs": cfg["model"]["kwargs"]}}
    ckpt = atomic_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "classification",
                        "config": cfg, "meta": meta, "model": model.state_dict(), "ema": None, "step": 1},
                       tmp_path / "best.pt")
    reads.clear()
    assert main(["eval", "--checkpoint", str(ckpt), "--split", "val", "--batch-size", "1", "--num-workers", "0",
                 "--device", "cpu"]) == 0
    assert reads == {str(ckpt.resolve()): 1}
    shown = json.loads(capsys.readouterr().out)
    assert shown["split"] == "val" and 0.0 <= shown["top1"] <= 1.0 and shown["num_views"] == 1
