"""Training runs in this process: accumulation equivalence, end-to-end train + eval on real videos through the
command handlers, failure accounting, mixed precision with EMA and clipping, resume rules."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from engine_helpers import run_cli, tiny_recipe, tiny_uniformer, write_moving_videos, write_recipe

from uniformer.cli import main as cli
from uniformer.engine import ConfigError, load_run_checkpoint
from uniformer.tasks import load_recipe, train

PNG = b"\x89PNG\r\n\x1a\n"


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _train(tmp_path, name, **sections):
    cfg = load_recipe(tiny_recipe(**sections))
    summary = train(cfg, tmp_path / name, show_progress=False)
    return summary, load_run_checkpoint(summary["checkpoint"])


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    # float32 (amp none): bfloat16 rounding depends on the batch shape, so only float32 can match to 1e-6
    _, big = _train(tmp_path, "big", train={"epochs": 1, "accum_steps": 1, "batch_size": 4, "amp": "none"})
    _, acc = _train(tmp_path, "acc", train={"epochs": 1, "accum_steps": 2, "batch_size": 2, "amp": "none"})
    assert big["step"] == acc["step"] == 3
    for key, value in big["model"].items():
        assert torch.allclose(value, acc["model"][key], atol=1e-6), key
    for a, b in zip(big["history"], acc["history"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert big["history"][-1]["val_top1"] == acc["history"][-1]["val_top1"]


def test_bf16_autocast_with_ema_and_clipping(tmp_path):
    summary, ckpt = _train(tmp_path, "amp", train={"epochs": 2, "amp": "bf16", "clip_grad": 0.5, "accum_steps": 2,
                                                   "batch_size": 2}, ema={"enabled": True, "decay": 0.5})
    rows = _rows(tmp_path / "amp" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6] and all(float(r["loss"]) > 0 for r in rows)
    assert {"val_ema_top1", "val_ema_loss"} <= set(rows[2])
    assert ckpt["ema"]["updates"] == 6 and ckpt["scaler"] is not None
    # the EMA really is an average: it differs from the final weights but tracks them
    w, e = ckpt["model"]["conv.weight"], ckpt["ema"]["module"]["conv.weight"]
    assert not torch.equal(w, e) and (w - e).abs().max() < w.abs().max()


def test_existing_run_needs_resume_and_a_finished_run_resumes_to_itself(tmp_path):
    first, _ = _train(tmp_path, "run", train={"epochs": 1})
    cfg = load_recipe(tiny_recipe(train={"epochs": 1}))
    with pytest.raises(ConfigError, match="--resume auto"):
        train(cfg, tmp_path / "run", show_progress=False)
    again = train(cfg, tmp_path / "run", resume="auto", show_progress=False)
    assert again["val_top1"] == first["val_top1"] and again["epochs"] == 1
    other = load_recipe(tiny_recipe(train={"epochs": 1}, model={"kwargs": {"width": 4}}))
    with pytest.raises(ConfigError, match="model or data differ"):
        train(other, tmp_path / "run", resume="auto", show_progress=False)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """`uniformer train` on eight real MP4s (one of them corrupt) with a tiny video UniFormer. float32: these tests
    check the run's outputs, not bfloat16 numerics (on an AMX Xeon, with bf16 autocast, this run's loss went NaN at
    step 2 when the deploy tests had run before it in the same process, and not alone)."""
    root = tmp_path_factory.mktemp("e2e")
    data = write_moving_videos(root / "videos", n_train=7, n_val=4, corrupt=1)
    recipe = {"task": "classification", "seed": 0, "model": {**tiny_uniformer(), "drop_path_rate": 0.1},
              "data": {**data, "label_smoothing": 0.1},
              "train": {"epochs": 2, "threads": 1, "batch_size": 4, "num_workers": 0, "amp": "none"},
              "optim": {"lr": 1e-3, "lr_base_batch": 8}, "sched": {"warmup_epochs": 1},
              "checkpoint": {"keep_last": 1}}
    config = write_recipe(root / "tiny.yaml", recipe)
    out = root / "run"
    code = cli(["train", str(config), "--out", str(out), "--no-progress", "--set", "train.eval_every=1"])
    return code, config, out


def test_train_writes_every_output(video_run):
    code, _, out = video_run
    assert code == 0
    rows = _rows(out / "metrics.csv")
    # log_every 10 > 2 steps per epoch: one row at the end of each epoch, training and validation numbers
    assert [int(r["step"]) for r in rows] == [2, 4] and [float(r["epoch"]) for r in rows] == [1, 2]
    assert {"step", "lr", "loss", "train_top1", "samples_per_second", "val_loss", "val_top1", "val_top5",
            "val_mean_class_acc"} <= set(rows[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["val_top1"] <= metrics["val_top5"] <= 1.0
    assert set(metrics["val_per_class_acc"]) == {"moves_right", "moves_left"}
    for png in ("curves.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "checkpoint_epoch0000002.pt", "last.pt"]
    assert (out / "train.log").is_file() and (out / "config.yaml").is_file()
    ckpt = torch.load(out / "checkpoint_epoch0000002.pt", weights_only=True)
    assert ckpt["task"] == "classification" and ckpt["step"] == 4 and ckpt["scheduler"]["last_step"] == 4
    assert ckpt["meta"]["classes"] == ["moves_right", "moves_left"]
    assert {"optimizer", "scaler", "rng", "history", "config"} <= set(ckpt)
    # lr_base_batch 8 with a batch of 4: the peak rate is halved
    assert ckpt["scheduler"]["peak_lr"] == pytest.approx(5e-4)
    assert not list(out.glob(".*tmp*"))


def test_corrupt_videos_are_counted_and_named(video_run):
    _, _, out = video_run
    assert json.loads((out / "metrics.json").read_text())["failures_total"] == 2  # once per epoch
    log = (out / "train.log").read_text()
    assert "replaced unreadable sample(s)" in log and "corrupt_0.mp4" in log


def test_eval_multi_view_json(video_run, tmp_path):
    _, config, out = video_run
    result_path = tmp_path / "eval.json"
    code = cli(["eval", str(config), "--checkpoint", str(out / "best.pt"), "--split", "test",
                "--set", "data.test_clips=2", "--set", "data.test_crops=3", "--output", str(result_path)])
    assert code == 0
    result = json.loads(result_path.read_text())
    assert result["split"] == "test" and result["num_samples"] == 4 and result["num_views"] == 6
    assert len(result["per_view_top1"]) == 6
    assert {"top1", "top5", "mean_class_acc", "per_class_acc", "loss"} <= set(result)
    assert result["top5"] == 1.0  # two classes
    assert (tmp_path / "eval_confusion_matrix.png").read_bytes()[:8] == PNG
    # without a recipe, the one recorded in the checkpoint is used
    assert cli(["eval", "--checkpoint", str(out / "best.pt"), "--split", "val", "--output",
                str(tmp_path / "recorded.json")]) == 0
    assert json.loads((tmp_path / "recorded.json").read_text())["num_samples"] == 4


def test_a_diverging_run_stops_with_a_clear_error(tmp_path):
    cfg = load_recipe(tiny_recipe(optim={"lr": 1e30}, train={"epochs": 3}))
    with pytest.raises(FloatingPointError, match="not finite .* lower optim.lr"):
        train(cfg, tmp_path / "nan", show_progress=False)


def test_a_diverging_run_ends_the_command_with_the_message_and_no_traceback(tmp_path):
    path = write_recipe(tmp_path / "diverge.yaml", tiny_recipe(optim={"lr": 1e30}, train={"epochs": 3}))
    proc = run_cli(["train", str(path), "--out", str(tmp_path / "nan"), "--no-progress", "--device", "cpu"],
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "error: the loss is not finite" in proc.stderr and "lower optim.lr" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_logged_loss_is_the_optimised_sum_counted_once(tmp_path, monkeypatch):
    """A task's own `loss` entry is the sum the runner optimises: it is logged once, not added to itself."""
    from uniformer.tasks.classification.task import Task

    def constant_loss(self, model, batch):
        return {"loss": model(batch["input"]).sum() * 0 + 0.5, "loss_part": torch.tensor(0.25)}

    monkeypatch.setattr(Task, "training_step", constant_loss)
    summary, _ = _train(tmp_path, "const", train={"epochs": 1, "batch_size": 4, "log_every": 1})
    assert [r["loss"] for r in summary["history"] if "loss" in r] == pytest.approx([0.75] * 3)  # 0.5 + 0.25
    assert all(r["loss_part"] == pytest.approx(0.25) for r in summary["history"] if "loss_part" in r)
