"""The command line without task branches: the device is checked before any work for every command, options of
another task are refused, `info --config` reports any recipe, predict/eval take the task from the checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from uniformer.cli import main
from uniformer.engine.checkpoint import atomic_save
from uniformer.tasks import CONFIGS

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@no_cuda
@pytest.mark.parametrize("task", ["classification", "detection", "segmentation", "pose"])
def test_unavailable_device_fails_before_any_work(task, tmp_path, capsys):
    data = tmp_path / "data"
    recipe = CONFIGS / task / "demo.yaml"
    commands = [["demo", "--task", task, "--data-root", str(data), "--out", str(tmp_path / "demo")],
                ["train", str(recipe), "--out", str(tmp_path / "run")],
                ["eval", str(recipe), "--checkpoint", str(tmp_path / "none.pt")],
                ["predict", "--checkpoint", str(tmp_path / "none.pt"), "x.png"]]
    for args in commands:
        assert main([*args, "--device", "cuda"]) == 2, args
        assert "CUDA is not available" in capsys.readouterr().err, args
    assert not data.exists() and not (tmp_path / "run").exists()  # no data generated, no run folder


def _segmentation_checkpoint(path: Path) -> Path:
    cfg = {"task": "segmentation", "model": {}, "data": {}}
    state = {"format": "uniformer-train", "version": 2, "task": "segmentation", "config": cfg, "meta": {},
             "model": {}, "step": 0}
    return atomic_save(state, path)


def test_predict_refuses_options_of_another_task_and_names_the_task(tmp_path, capsys):
    ckpt = _segmentation_checkpoint(tmp_path / "seg.pt")
    assert main(["predict", "--checkpoint", str(ckpt), "--topk", "3", "a.png"]) == 2
    assert "--topk does not apply to segmentation checkpoints" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(ckpt), "--dtype", "float32", "a.png"]) == 2
    assert "--dtype: classification options; a segmentation checkpoint" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(ckpt), "--task", "pose", "a.png"]) == 2
    assert "is a segmentation checkpoint" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(ckpt), "--score-thr", "0.5", "a.png"]) == 2
    assert "--score-thr does not apply" in capsys.readouterr().err


def test_classification_predictor_names_a_checkpoint_of_another_task(tmp_path):
    from uniformer.tasks import open as open_checkpoint

    with pytest.raises(ValueError, match="this is a segmentation checkpoint"):
        open_checkpoint(_segmentation_checkpoint(tmp_path / "seg.pt"), task="classification")


@pytest.mark.parametrize("task", ["classification", "segmentation", "pose", "detection"])
def test_info_reports_any_recipe(task, capsys, tmp_path):
    """As on a fresh machine: the demo data root is an empty folder (no class list, no annotations)."""
    root = tmp_path / "never_generated"
    assert main(["info", "--config", str(CONFIGS / task / "demo.yaml"), "--set", f"data.root={root}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"params", "gflops", "recipe"} <= set(out) and out["params"] > 0 and out["gflops"] > 0
    assert out["recipe"]["task"] == task  # the resolved recipe


def test_info_of_a_segmentation_recipe_counts_its_classes_without_the_data(tmp_path, capsys):
    """The head's width follows data.num_classes where the class list is not there; neither known: a clear error."""
    args = ["info", "--config", str(CONFIGS / "segmentation" / "demo.yaml"), "--set", f"data.root={tmp_path}", "--json"]
    counts = {}
    for n in (4, 5):
        assert main([*args, "--set", f"data.num_classes={n}"]) == 0
        counts[n] = json.loads(capsys.readouterr().out)["params"]
    assert counts[5] - counts[4] == 32 + 1  # one more class: one more output channel of the 32-wide 1x1 classifier
    assert main([*args, "--set", "data.num_classes=null"]) != 0
    assert "classes.txt does not exist; set data.num_classes" in capsys.readouterr().err


def test_info_reports_the_class_count_a_recipe_implies(capsys):
    tiny = ["model.kwargs={depths: [1, 1, 1, 1], embed_dims: [16, 32, 64, 128], head_dim: 16}",
            "data.num_frames=2", "data.input_size=32"]
    for recipe, classes in (("uniformer_s16x4_k400", 400), ("uniformer_s16_sthv2_prek600", 174),
                            ("in1k_light_xxs_128", 1000)):
        args = ["info", "--config", str(CONFIGS / "classification" / f"{recipe}.yaml"), "--json"]
        assert main(args + [x for kv in tiny for x in ("--set", kv)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["num_classes"] == classes, recipe
        assert out["recipe"]["data"]["num_classes"] == classes and "num_sample" in out["recipe"]["data"]
