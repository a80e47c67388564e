"""Repeated augmentation in the runner: an epoch of data.num_sample = N has N times the steps of one clip per video,
a step's batch counts clips, and two processes under gloo train on their shards exactly as one process on both."""
from __future__ import annotations

import json

import pytest
import torch
from engine_helpers import run_cli, tiny_recipe, write_moving_videos, write_recipe

from uniformer.engine.config import ConfigError
from uniformer.engine.runner import seed_everything
from uniformer.tasks import build_task, load_recipe, train


def _recipe(tmp_path, num_sample: int, batch: int, videos: int = 6, **train_keys) -> dict:
    data = write_moving_videos(tmp_path / "videos", videos, 2, frames=4, size=16)
    recipe = tiny_recipe(train={"epochs": 1, "batch_size": batch, **train_keys})
    recipe["data"] = {**data, "num_sample": num_sample, "random_resized_crop": True}
    return recipe


@pytest.mark.parametrize("num_sample,videos,steps", [(1, 6, 1), (2, 7, 3), (3, 6, 6)])
def test_an_epoch_has_num_sample_times_the_steps(tmp_path, num_sample, videos, steps):
    # batch = 4 clips for num_sample 1 and 2 (4 videos / 2 videos per step), 3 for num_sample 3 (1 video per step).
    # Steps = floor(videos * num_sample / batch): the tail that does not fill a step is dropped, as the original's
    # training DataLoader (drop_last) and this runner without repeated augmentation.
    batch = 3 if num_sample == 3 else 4
    recipe = _recipe(tmp_path, num_sample, batch, videos)
    summary = train(load_recipe(recipe), tmp_path / "run", device="cpu", show_progress=False)
    assert summary["steps"] == steps == videos * num_sample // batch
    assert summary["epochs"] == 1


def test_a_batch_must_hold_whole_videos(tmp_path):
    with pytest.raises(ConfigError, match=r"train.batch_size = 5 .*data.num_sample = 2"):
        load_recipe(_recipe(tmp_path, 2, 5))


def test_two_processes_train_as_one_on_their_shards(tmp_path):
    # one process with 8 clips (4 videos x 2) per step against two with 4 clips (2 videos x 2) each: the same clips,
    # augmented alike, so the same gradients and weights (the toy network has no batch statistics)
    base = _recipe(tmp_path, 2, 8, videos=8, amp="none")  # float32: the weights are compared to 1e-5
    base["sched"] = {"warmup_epochs": 0}
    base["optim"]["lr"] = 0.05
    train(load_recipe(base), tmp_path / "one", device="cpu", show_progress=False)
    two = write_recipe(tmp_path / "two.yaml", {**base, "train": {**base["train"], "batch_size": 4}})
    args = ["train", str(two), "--out", str(tmp_path / "two"), "--no-progress", "--device", "cpu"]
    proc = run_cli(args, cwd=tmp_path, torchrun=2, module="ddp_driver", timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    s1, s2 = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert s1["steps"] == s2["steps"] == 2  # 8 videos x 2 clips / 8 clips per step
    w1, w2 = (torch.load(tmp_path / n / "last.pt", map_location="cpu", weights_only=True)["model"]
              for n in ("one", "two"))
    for key in w1:
        assert torch.allclose(w1[key], w2[key], atol=1e-5), key
    task = build_task(load_recipe(base))
    task.build_datasets(["train"])
    seed_everything(base["seed"])  # the runner's initial weights
    initial = task.build_model().state_dict()
    assert max(float((w1[k] - initial[k]).abs().max()) for k in w1) > 1e-3  # the steps moved the weights


def test_a_shipped_video_recipe_trains_with_its_augmentation(tmp_path):
    # uniformer_s16x4_k400 as shipped (RandAugment on the decoded frames, random-resized crop, 2 clips per video,
    # erasing, Mixup / CutMix, clipping 20), only sizes, data and weights swapped for tiny ones
    from uniformer.tasks import CONFIGS

    data = write_moving_videos(tmp_path / "videos", 4, 2, frames=8, size=40)
    overrides = [f"data.root={data['root']}", f"data.train_list={data['train_list']}",
                 f"data.val_list={data['val_list']}", f"data.test_list={data['val_list']}", "data.num_classes=2",
                 "data.num_frames=4", "data.stride=2", "data.input_size=32", "data.short_side=32",
                 "data.test_clips=1", "model.checkpoint=null",
                 "model.kwargs={depths: [1, 1, 1, 1], embed_dims: [16, 32, 64, 128], head_dim: 16}",
                 "train.batch_size=4", "train.num_workers=0", "train.epochs=1", "train.amp=none",
                 "train.eval_every=1", "train.threads=1"]
    cfg = load_recipe(CONFIGS / "classification" / "uniformer_s16x4_k400.yaml", overrides)
    assert cfg["data"]["num_sample"] == 2 and cfg["train"]["clip_grad"] == 20
    summary = train(cfg, tmp_path / "run", device="cpu", show_progress=False)
    assert summary["steps"] == 2  # 4 videos x 2 clips / 4 clips per step
    assert 0 <= summary["val_top1"] <= 1


def test_a_run_resumed_in_the_middle_of_an_epoch_ends_where_an_unbroken_one_does(tmp_path):
    # checkpoints every step (iterations); an epoch of 6 videos x 2 clips / 4 clips is 3 steps, so the checkpoint of
    # step 4 sits in the middle of the second epoch: resuming from it must draw the same clips as the unbroken run
    recipe = _recipe(tmp_path, 2, 4)
    recipe["train"] = {**recipe["train"], "epochs": None, "iters": 6, "eval_every": None}
    recipe["checkpoint"] = {"every": 1, "keep_last": 10}
    recipe["sched"] = {"warmup_iters": 0, "warmup_epochs": 0}
    cfg = load_recipe(recipe)
    train(cfg, tmp_path / "whole", device="cpu", show_progress=False)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint_iter0000004.pt").write_bytes((tmp_path / "whole" / "checkpoint_iter0000004.pt").read_bytes())
    summary = train(cfg, resumed, resume="auto", device="cpu", show_progress=False)
    assert summary["steps"] == 6
    w1, w2 = (torch.load(d / "last.pt", map_location="cpu", weights_only=True)["model"]
              for d in (tmp_path / "whole", resumed))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
