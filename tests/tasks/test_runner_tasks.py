"""Every dense task through the one runner: two gloo processes under torchrun match one process with the same
global batch, and a segmentation run SIGKILLed in the middle of an epoch resumes to the same weights."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from dense_helpers import TINY_BACKBONE
from engine_helpers import run_cli

from uniformer.tasks import load_recipe, train
from uniformer.tasks.dense.synthetic import write_pose_coco, write_shapes_coco, write_shapes_segmentation

HERE = Path(__file__).resolve().parent
# Tolerances of the 2-process vs 1-process comparison. The data, augmentations and gradients are the same;
# BatchNorm layers (UniFormer's convolution stages, the heads) see 2 samples per process instead of the whole
# batch, which moves the losses of the first steps by a few percent and the final metric by a few points.
LOSS_RTOL = 0.1
METRIC_ATOL = 0.15


def _recipes(root: Path) -> dict[str, dict]:
    seg = write_shapes_segmentation(root / "seg", n_train=8, n_val=3, size=(64, 64))
    det = write_shapes_coco(root / "det", n_train=8, n_val=3, size=(96, 96))
    pose = write_pose_coco(root / "pose", n_train=8, n_val=3, size=(96, 96))
    common = {"seed": 1, "deterministic": True, "optim": {"lr": 2e-3},
              "sched": {"name": "constant", "warmup_iters": 0}}
    return {
        "segmentation": {**common, "task": "segmentation",
                         "model": {"backbone": dict(TINY_BACKBONE), "head": "fpn", "channels": 16,
                                   "neck_channels": 16, "aux_head": False, "dropout": 0.0},
                         "data": {"format": "folder", "root": str(seg), "classes": "classes.txt", "num_classes": None,
                                  "train": {"images": "images/train", "masks": "masks/train"},
                                  "val": {"images": "images/val", "masks": "masks/val"},
                                  "img_scale": [64, 64], "ratio_range": [0.75, 1.25], "crop_size": [64, 64]},
                         "train": {"iters": 4, "batch_size": 4, "num_workers": 0, "log_every": 1, "threads": 1},
                         "checkpoint": {"every": 4}},
        "detection": {**common, "task": "detection",
                      "model": {"backbone": {**TINY_BACKBONE, "window_size": 4}, "fpn_channels": 32,
                                "box_head_dim": 64, "mask_head_channels": [32], "rpn_batch": 64, "roi_batch": 64,
                                "anchor_sizes": [16, 32, 64, 128, 256]},
                      "data": {"root": str(det),
                               "train": {"annotations": "annotations/instances_train.json", "images": "train"},
                               "val": {"annotations": "annotations/instances_val.json", "images": "val"},
                               "train_scales": [96], "test_scale": 96, "max_size": 96, "flip_prob": 0.0},
                      "train": {"epochs": None, "iters": 4, "batch_size": 2, "num_workers": 0, "log_every": 1,
                                "threads": 1},
                      "checkpoint": {"every": 4}},
        "pose": {**common, "task": "pose",
                 "model": {"backbone": dict(TINY_BACKBONE), "deconv_channels": 16},
                 "data": {"root": str(pose),
                          "train": {"annotations": "annotations/person_keypoints_train.json", "images": "train"},
                          "val": {"annotations": "annotations/person_keypoints_val.json", "images": "val",
                                  "detections": None},
                          "input_size": [32, 64]},
                 "train": {"epochs": None, "iters": 4, "batch_size": 4, "num_workers": 0, "log_every": 1,
                           "threads": 1},
                 "checkpoint": {"every": 4},
                 "test": {"use_gt_bbox": True, "batch_size": 8}},
    }


def _half_batch(recipe: dict) -> dict:
    return {**recipe, "train": {**recipe["train"], "batch_size": recipe["train"]["batch_size"] // 2}}


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One torchrun launch (2 processes) trains all three tasks; then each trains on one process."""
    root = tmp_path_factory.mktemp("runner")
    recipes = _recipes(root)
    args = []
    for task, recipe in recipes.items():
        path = root / f"{task}_ddp.yaml"
        path.write_text(yaml.safe_dump(_half_batch(recipe)))
        args += ["train", str(path), "--out", str(root / f"{task}_ddp"), "--no-progress", "--device", "cpu",
                 "--then"]
    proc = run_cli(args[:-1], cwd=root, torchrun=2, module="ddp_driver", timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Grad strides do not match bucket view strides" not in proc.stderr  # DDP copies no gradient twice
    torch.set_num_threads(1)
    single = {task: train(load_recipe(recipe), root / f"{task}_one", show_progress=False)
              for task, recipe in recipes.items()}
    return root, single


@pytest.mark.parametrize("task,metric", [("detection", "val_bbox_AP50"), ("segmentation", "val_mIoU"),
                                         ("pose", "val_AP")])
def test_two_processes_match_one(runs, task, metric):
    root, single = runs
    ddp, one = _rows(root / f"{task}_ddp" / "metrics.csv"), _rows(root / f"{task}_one" / "metrics.csv")
    assert [r["step"] for r in ddp] == [r["step"] for r in one] == ["1", "2", "3", "4"]
    for a, b in zip(ddp[:2], one[:2]):  # the first steps' losses
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=LOSS_RTOL)
    summary = json.loads((root / f"{task}_ddp" / "metrics.json").read_text())
    assert summary[metric] == pytest.approx(single[task][metric], abs=METRIC_ATOL)
    ckpt = torch.load(root / f"{task}_ddp" / "last.pt", weights_only=True)
    assert ckpt["task"] == task and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert "[rank 1]" not in (root / f"{task}_ddp" / "train.log").read_text()


def test_segmentation_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    recipe = _recipes(tmp_path)["segmentation"]
    # 8 images, batch 2: 4 steps per epoch; checkpoints after steps 3 and 6 (step 3: in the middle of epoch 1)
    recipe = {**recipe, "train": {**recipe["train"], "iters": 8, "batch_size": 2}, "checkpoint": {"every": 3}}
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump(recipe))
    killed = tmp_path / "killed"
    # killed as it loads the 10th training image: in step 5, after the step-3 checkpoint
    proc = run_cli(["train", str(config), "--out", str(killed), "--no-progress"], cwd=tmp_path,
                   module="kill_driver", UF_TEST_KILL_AFTER_ITEMS="10")
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert sorted(p.name for p in killed.glob("checkpoint_*.pt")) == ["checkpoint_iter0000003.pt"]
    assert [r["step"] for r in _rows(killed / "metrics.csv")] == ["1", "2", "3"]
    # a fresh run into a folder that holds a run is refused
    again = run_cli(["train", str(config), "--out", str(killed), "--no-progress"], cwd=tmp_path)
    assert again.returncode == 2 and "--resume auto" in again.stderr
    resumed = run_cli(["train", str(config), "--out", str(killed), "--no-progress", "--resume", "auto"],
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    torch.set_num_threads(1)
    train(load_recipe(config), tmp_path / "straight", show_progress=False)
    rows = _rows(killed / "metrics.csv")
    assert [r["step"] for r in rows] == [str(i) for i in range(1, 9)]  # each step exactly once
    straight = _rows(tmp_path / "straight" / "metrics.csv")
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight]
    a = torch.load(killed / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert "resumed from" in (killed / "train.log").read_text()


def test_bf16_autocast_trains_every_dense_task(tmp_path):
    torch.set_num_threads(1)
    for task, recipe in _recipes(tmp_path).items():
        recipe = {**recipe, "train": {**recipe["train"], "iters": 2, "amp": "bf16"}, "checkpoint": {"every": 2}}
        summary = train(load_recipe(recipe), tmp_path / f"{task}_bf16", show_progress=False)
        assert summary["steps"] == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in summary["history"]
                                             if "loss" in r), task
