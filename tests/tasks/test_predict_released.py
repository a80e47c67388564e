"""`uniformer predict --model NAME.TAG`: released weights from the hub (faked here), the tag's test recipe,
the class names of its dataset, the picture of the sampled frames."""
from __future__ import annotations

import json

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image

import uniformer
from uniformer.cli import main
from uniformer.data import class_names
from uniformer.data.video_io import write_video
from uniformer.tasks.classification.predict import load_predictor

TINY = ["-o", "depths=[1,1,1,1]", "-o", "embed_dims=[16,32,64,128]", "-o", "head_dim=16"]
TINY_KWARGS = {"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}


@pytest.fixture
def kinetics_file(tmp_path):
    """A tiny video UniFormer with a 400-way classifier, saved as the original video training script does."""
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_video_small", num_classes=400, **TINY_KWARGS)
    path = tmp_path / "uniformer_small_k400_16x8.pth"
    torch.save({"model_state": model.state_dict(), "epoch": 110}, path)
    return path


@pytest.fixture
def fake_hub(monkeypatch, kinetics_file):
    asked = []

    def download(repo_id, filename, **kwargs):
        asked.append(f"{repo_id}/{filename}")
        return str(kinetics_file)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return asked


@pytest.fixture
def clip(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "clip.mp4"
    write_video(path, rng.integers(0, 255, (40, 48, 64, 3), dtype=np.uint8), fps=10)
    return path


def test_predict_from_a_tag_uses_its_recipe_and_kinetics_names(fake_hub, clip, tmp_path, capsys):
    code = main(["predict", "--model", "uniformer_video_small.k400_16x8", *TINY, "--json", "--out",
                 str(tmp_path / "pictures"), str(clip)])
    assert code == 0
    assert fake_hub == ["Sense-X/uniformer_video/uniformer_small_k400_16x8.pth"]
    (result,) = json.loads(capsys.readouterr().out)
    names = class_names("kinetics-400")
    assert result["error"] is None and result["views"] == 4  # 1 crop x 4 clips, as the original tested
    assert len(result["predictions"]) == 5
    assert all(p["label"] == names[p["index"]] for p in result["predictions"])
    figure = Image.open(result["figure"])
    assert figure.size[0] > 300 and figure.size[1] > 100

    predictor = load_predictor(None, "uniformer_video_small.k400_16x8", model_options=TINY_KWARGS)
    cfg = predictor.data_cfg
    assert (cfg["num_frames"], cfg["sampling"], cfg["stride"]) == (16, "dense", 8)
    assert (cfg["short_side"], cfg["input_size"], cfg["test_crops"], cfg["test_clips"]) == (224, 224, 1, 4)
    assert (cfg["channel_order"], cfg["mean"], cfg["view_aggregation"]) == ("RGB", [0.45] * 3, "sum_logits")
    assert predictor.dataset == "kinetics-400" and predictor.classes == names


def test_text_output_prints_names(fake_hub, clip, capsys):
    assert main(["predict", "--model", "uniformer_video_small.k400_16x8", *TINY, "--topk", "3", str(clip)]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("  ") and ". " in ln]
    assert len(lines) == 3
    assert all(ln.split(". ", 1)[1].rsplit(None, 1)[0].strip() in class_names("kinetics-400") for ln in lines)
    assert "class_" not in out


def test_a_bare_name_uses_its_default_tag(fake_hub, clip):
    predictor = load_predictor(None, "uniformer_video_small", model_options=TINY_KWARGS)
    assert fake_hub == ["Sense-X/uniformer_video/uniformer_small_k400_16x8.pth"]
    assert predictor.data_cfg["stride"] == 8


def test_checkpoint_overrides_the_hub_weights_and_labels_the_names(monkeypatch, kinetics_file, clip, tmp_path,
                                                                    capsys):
    def no_hub(*args, **kwargs):
        raise AssertionError("--checkpoint given: the hub must not be asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    labels = tmp_path / "names.txt"
    labels.write_text("".join(f"action {i}\n" for i in range(400)))
    code = main(["predict", "--model", "uniformer_video_small.k400_16x8", "--checkpoint", str(kinetics_file), *TINY,
                 "--labels", str(labels), "--json", "--data", "test_clips=1", str(clip)])
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["views"] == 1 and all(p["label"] == f"action {p['index']}" for p in result["predictions"])


def test_a_file_of_another_dataset_is_refused(monkeypatch, kinetics_file, clip, capsys):
    code = main(["predict", "--model", "uniformer_video_small.k600_16x8", "--checkpoint", str(kinetics_file), *TINY,
                 str(clip)])
    assert code == 2
    assert "400 classes" in capsys.readouterr().err


def test_offline_says_how_to_pass_the_file(monkeypatch, clip, capsys):
    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline mode is enabled and the file is not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    code = main(["predict", "--model", "uniformer_video_small.k400_16x8", str(clip)])
    assert code == 2
    err = capsys.readouterr().err
    assert "Sense-X/uniformer_video/uniformer_small_k400_16x8.pth" in err and "LocalEntryNotFoundError" in err
    assert "--checkpoint FILE" in err


def test_unconfirmed_hub_file_says_so(monkeypatch, clip, capsys):
    def missing(*args, **kwargs):
        raise huggingface_hub.errors.EntryNotFoundError("404")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    assert main(["predict", "--model", "uniformer_video_base.k400_32x4", str(clip)]) == 2
    assert "could not be confirmed" in capsys.readouterr().err


def test_a_name_without_released_weights_needs_a_checkpoint(clip, capsys):
    assert main(["predict", "--model", "uniformer_video_xs", str(clip)]) == 2
    assert "--checkpoint is needed" in capsys.readouterr().err
