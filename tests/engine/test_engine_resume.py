"""A run SIGKILLed in the middle of an epoch and resumed with `--resume auto` ends exactly where an
uninterrupted run ends (deterministic mode): same weights, EMA, optimiser state and metrics."""
from __future__ import annotations

import csv
import json

import torch
from engine_helpers import KILL_ENV, run_cli, tiny_recipe, tiny_uniformer, write_recipe

from uniformer.tasks import load_recipe, train

TIMING = ("samples_per_second",)


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    # BatchNorm, drop path, Mixup/CutMix, label smoothing, random train noise and an EMA: every
    # random stream and every piece of state the resume has to restore.
    recipe = tiny_recipe(
        model={**tiny_uniformer(), "drop_path_rate": 0.1},
        data={"mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1},
        train={"epochs": 3, "amp": "none"},  # float32: bit-exact comparison on any CPU
        ema={"enabled": True, "decay": 0.8},
        optim={"lr": 2e-3},
    )
    config = write_recipe(tmp_path / "recipe.yaml", recipe)
    killed = tmp_path / "killed"
    # 12 training items per epoch: the process kills itself as it loads the 6th item of epoch 2.
    proc = run_cli(["train", str(config), "--out", str(killed), "--no-progress"], cwd=tmp_path,
                   **{KILL_ENV: "18"})
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert sorted(p.name for p in killed.glob("checkpoint_*.pt")) == ["checkpoint_epoch0000001.pt"]
    assert [r["step"] for r in _rows(killed / "metrics.csv")] == ["1", "2", "3"]

    cfg = load_recipe(config)
    resumed = train(cfg, killed, resume="auto", show_progress=False)
    straight = train(cfg, tmp_path / "straight", show_progress=False)

    rows = _rows(killed / "metrics.csv")
    assert rows == _rows(tmp_path / "straight" / "metrics.csv")
    assert [r["step"] for r in rows] == [str(i) for i in range(1, 10)]  # each step exactly once
    assert resumed["val_top1"] == straight["val_top1"] and resumed["val_loss"] == straight["val_loss"]
    a = torch.load(killed / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"]["module"][key], b["ema"]["module"][key]), key
    for pid, state in b["optimizer"]["state"].items():
        assert torch.equal(a["optimizer"]["state"][pid]["exp_avg_sq"], state["exp_avg_sq"])
    assert a["scheduler"] == b["scheduler"] and a["step"] == b["step"] == 9
    log = (killed / "train.log").read_text()
    assert "resumed from" in log and "last.pt" in log
    assert json.loads((killed / "metrics.json").read_text())["epochs"] == 3
