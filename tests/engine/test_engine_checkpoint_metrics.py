"""Checkpoint atomicity, retention, plain-data contents; metrics and multi-view aggregation."""
from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import torch
from uniformer.engine.evaluation import predict_loader, score_predictions
from uniformer.engine.metrics import average_views, classification_metrics, confusion_matrix, topk_accuracy

from uniformer.engine.checkpoint import (
    CheckpointManager,
    atomic_save,
    capture_rng_state,
    find_latest_checkpoint,
    restore_rng_state,
    to_plain,
)
from uniformer.engine.distributed import DistInfo


def test_atomic_save_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"x": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"x": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_retention_keeps_the_last_k_and_best(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for epoch in range(1, 5):
        mgr.save({"epoch": epoch}, epoch)
    mgr.save_best({"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "checkpoint_epoch0003.pt",
                                                          "checkpoint_epoch0004.pt"]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch0004.pt"
    assert torch.load(mgr.best_path, weights_only=True) == {"epoch": 2}
    keep_all = CheckpointManager(tmp_path / "all", keep_last=None)
    for epoch in range(1, 4):
        keep_all.save({"epoch": epoch}, epoch)
    assert len(keep_all.checkpoints()) == 3


def test_to_plain_converts_numpy_and_rejects_objects():
    out = to_plain({"a": np.float32(1.5), "b": np.arange(3), "c": [1, (2, "x")]})
    assert out["a"] == 1.5 and isinstance(out["a"], float) and torch.equal(out["b"], torch.arange(3))
    with pytest.raises(TypeError, match=r"checkpoint\.config\.args: a argparse\.Namespace"):
        to_plain({"config": {"args": argparse.Namespace(x=1)}})


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    atomic_save(to_plain({"rng": state}), tmp_path / "rng.pt")
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_metrics_on_a_hand_made_example():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]])
    labels = torch.tensor([0, 1, 1, 1])
    m = classification_metrics(probs, labels, ["a", "b", "c"])
    assert m["top1"] == pytest.approx(0.5)
    assert topk_accuracy(probs, labels, (2,))[2] == pytest.approx(1.0)
    assert m["top5"] == 1.0  # k capped at the number of classes
    assert m["per_class_acc"] == {"a": 1.0, "b": pytest.approx(1 / 3), "c": None}
    assert m["mean_class_acc"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert m["loss"] == pytest.approx(-np.log([0.7, 0.3, 0.4, 0.5]).mean(), rel=1e-5)
    assert m["confusion"].tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert confusion_matrix(torch.tensor([2]), torch.tensor([0]), 3)[0, 2] == 1


def test_views_are_averaged_as_probabilities_not_logits():
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 2.2, 2.2]]])  # one sample, two views
    probs = average_views(logits)
    assert torch.allclose(probs, logits.softmax(-1).mean(1))
    assert probs.argmax().item() == 0  # logit averaging would pick class 1 or 2 (2.0 vs 1.1 each)
    assert logits.mean(1).argmax().item() == 0 and logits.mean(1)[0, 1] > 1.0


class _FixedViews(torch.nn.Module):
    """Logits = the first three input values of each view (so the test controls every view's vote)."""

    video = True

    def forward(self, x):
        return x.flatten(1)[:, :3]


def test_predict_loader_aggregates_views_and_reports_each_view():
    view_logits = torch.tensor([[[5.0, 0, 0], [0, 1, 0]],  # views disagree: mean softmax -> class 0
                                [[0, 0, 3.0], [0, 0, 3.0]],
                                [[0, 2.0, 0], [3.0, 0, 0]]])  # -> class 0 (softmax mean), label 1
    batch = {"input": torch.zeros(3, 2, 3, 2, 1, 1), "label": torch.tensor([0, 2, 1]),
             "index": torch.tensor([0, 1, 2]), "failures": ["x.mp4"]}
    batch["input"].view(3, 2, -1)[:, :, :3] = view_logits
    pred = predict_loader(_FixedViews(), [batch], DistInfo(), show_progress=False)
    assert torch.allclose(pred.probs, view_logits.softmax(-1).mean(1))
    m = score_predictions(pred)
    assert m["num_views"] == 2 and m["top1"] == pytest.approx(2 / 3)
    assert m["per_view_top1"] == pytest.approx([1.0, 1 / 3])  # each view alone: 3/3 and 1/3 right
    assert m["failures"] == ["x.mp4"]
