"""`uniformer demo` wiring: data generation is swapped for a tiny video set so the command runs in seconds
(the real demo is measured by hand: it must reach val_top1 >= 0.9 within 10 minutes on 2 CPU cores)."""
from __future__ import annotations

import json

from engine_helpers import write_moving_videos

import uniformer.data
from uniformer.cli import main


def test_demo_trains_evaluates_and_predicts(tmp_path, monkeypatch, capsys):
    calls = []

    def tiny_demo_data(root):
        calls.append(root)
        write_moving_videos(root, n_train=8, n_val=4)
        (root / "classnames.txt").write_text("moves_right\nmoves_left\n")

    monkeypatch.setattr(uniformer.data, "generate_demo_dataset", tiny_demo_data)
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--data-root", str(tmp_path / "cache"), "--epochs", "2", "--show", "3",
            "--no-progress", "--set", "train.batch_size=4", "--set", "train.num_workers=0",
            "--set", "data.num_frames=4", "--set", "data.input_size=32", "--set", "data.short_side=32",
            "--set", "data.scale_jitter=[32,40]"]
    assert main(args) == 0 and calls == [tmp_path / "cache"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["val_top1"] <= metrics["val_top5"] <= 1 and metrics["epochs"] == 2
    assert metrics["wall_seconds"] > 0 and metrics["bar"] == {"val_top1": 0.9} and "passed" in metrics
    for name in ("curves.png", "confusion_matrix.png", "metrics.csv", "train.log", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "classification demo: val_top1" in printed and printed.count("predicted ") == 3
    assert "true moves_right" in printed and "true moves_left" in printed  # clips of both classes are shown
    # a demo is a run like any other: a second one into the same folder needs --resume
    assert main(args) == 2
    assert main(args + ["--resume", "auto"]) == 0
    assert json.loads((out / "metrics.json").read_text())["val_top1"] == metrics["val_top1"]
