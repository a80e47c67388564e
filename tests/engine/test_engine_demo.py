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
        data = write_moving_videos(tmp_path / "videos", n_train=8, n_val=4)
        return {**data, "size": 32, "classes": ["moves_right", "moves_left"]}

    monkeypatch.setattr(uniformer.data, "generate_demo_dataset", tiny_demo_data)
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--data-root", str(tmp_path / "cache"), "--epochs", "2", "--show", "3",
                 "--no-progress", "--set", "data.batch_size=4"])
    assert code == 0 and calls == [tmp_path / "cache"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["val_top1"] <= metrics["val_top5"] <= 1 and metrics["epochs"] == 2
    assert metrics["wall_seconds"] > 0 and (out / "checkpoint_epoch0002.pt").is_file()
    for name in ("curves.png", "confusion_matrix.png", "metrics.csv", "eval_val.json"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "val top-1" in printed and printed.count("predicted ") == 3
    assert "true moves_right" in printed and "true moves_left" in printed  # clips of both classes are shown
    # a second call reuses the finished run instead of training again
    assert main(["demo", "--out", str(out), "--data-root", str(tmp_path / "cache"), "--epochs", "2", "--show", "1",
                 "--no-progress", "--set", "data.batch_size=4"]) == 0
    assert json.loads((out / "metrics.json").read_text())["val_top1"] == metrics["val_top1"]
