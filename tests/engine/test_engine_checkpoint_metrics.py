"""Checkpoint atomicity, retention, `--resume auto` fallback, the earlier layouts; classification metrics and
multi-view aggregation."""
from __future__ import annotations

import argparse
import logging
import os
import random

import numpy as np
import pytest
import torch

from uniformer.engine.checkpoint import (
    CheckpointManager,
    atomic_save,
    capture_rng_state,
    load_run_checkpoint,
    open_checkpoint,
    restore_rng_state,
    to_plain,
)
from uniformer.engine.distributed import DistInfo
from uniformer.engine.runner import eval_batches
from uniformer.tasks import load_recipe
from uniformer.tasks.classification import Task
from uniformer.tasks.classification.metrics import (
    classification_metrics,
    combine_views,
    confusion_matrix,
    topk_accuracy,
    view_probabilities,
)


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


def _state(step: int) -> dict:
    return {"format": "uniformer-train", "version": 2, "task": "classification", "config": {}, "meta": {},
            "model": {}, "step": step, "optimizer": {}, "history": []}


def test_retention_keeps_the_last_k_and_best(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for epoch in range(1, 5):
        mgr.save(_state(epoch), epoch)
    mgr.save_best({"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "checkpoint_epoch0000003.pt",
                                                          "checkpoint_epoch0000004.pt", "last.pt"]
    assert mgr.latest() == tmp_path / "last.pt" and torch.load(mgr.last_path, weights_only=True)["step"] == 4
    assert torch.load(mgr.best_path, weights_only=True) == {"epoch": 2}
    keep_all = CheckpointManager(tmp_path / "all", keep_last=None, unit="iter")
    for it in (100, 200, 300):
        keep_all.save(_state(it), it)
    assert [p.name for p in keep_all.periodic()] == [f"checkpoint_iter{i:07d}.pt" for i in (100, 200, 300)]


def test_resume_auto_skips_an_unreadable_newest_checkpoint(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2):
        mgr.save(_state(step), step)
    os.unlink(mgr.last_path)
    truncated = mgr.periodic_path(3)
    truncated.write_bytes(mgr.periodic_path(2).read_bytes()[:100])  # a copy cut short (a full disk)
    with caplog.at_level(logging.WARNING):
        path, ckpt = mgr.load_latest()
    assert path == mgr.periodic_path(2) and ckpt["step"] == 2
    assert str(truncated) in caplog.text
    with pytest.raises(ValueError, match="cannot be read"):
        load_run_checkpoint(truncated)


def test_the_two_earlier_layouts_still_open(tmp_path):
    old_train = {"format": "uniformer-train", "version": 1, "model": {"w": torch.ones(1)}, "ema": None,
                 "global_step": 9, "history": [], "config": {"data": {"batch_size": 4}}, "classes": ["a", "b"],
                 "num_classes": 2, "model_spec": {"name": "m", "kwargs": {}}}
    old_dense = {"format": "uniformer-dense", "task": "segmentation", "config": {"train": {"seed": 1}},
                 "meta": {"classes": ["x"]}, "model": {"w": torch.zeros(1)}, "iter": 40}
    torch.save(old_train, tmp_path / "train.pt")
    torch.save(old_dense, tmp_path / "dense.pt")
    a, b = open_checkpoint(tmp_path / "train.pt").run, open_checkpoint(tmp_path / "dense.pt").run
    assert a["task"] == "classification" and a["step"] == 9 and a["meta"]["classes"] == ["a", "b"]
    assert b["task"] == "segmentation" and b["step"] == 40 and b["meta"] == {"classes": ["x"]}
    with pytest.raises(ValueError, match="not be resumed|can be evaluated"):
        load_run_checkpoint(tmp_path / "dense.pt")
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "original.pth")
    original = open_checkpoint(tmp_path / "original.pth")
    assert original.run is None and original.kind == "original"


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


def test_views_are_combined_as_the_original_sum_of_logits_or_mean_softmax_on_request():
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 2.2, 2.5]]])  # one sample, two views
    assert torch.equal(combine_views(logits), logits.sum(1))  # the original TestMeter: "sum"
    assert combine_views(logits).argmax().item() == 0  # 4.0 vs 2.2 / 2.5 summed
    soft = combine_views(logits, "mean_softmax")
    assert torch.allclose(soft, logits.softmax(-1).mean(1))
    assert soft.argmax().item() == 0
    disagree = torch.tensor([[[3.0, 0.0], [0.0, 3.5]], [[5.0, 0.0], [0.0, 0.5]]])[:1]
    assert combine_views(disagree).argmax().item() == 1  # 3.0 vs 3.5 summed
    probs = view_probabilities(disagree)
    assert probs.argmax().item() == 1 and torch.allclose(probs.sum(-1), torch.ones(1))
    with pytest.raises(ValueError, match="view aggregation"):
        combine_views(logits, "max")


class _FixedViews(torch.nn.Module):
    """Logits = the first three input values of each view (so the test controls every view's vote)."""

    video = True

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # a device to read

    def forward(self, x):
        return x.flatten(1)[:, :3]


class _Items(torch.utils.data.Dataset):
    def __init__(self, x, labels):
        self.x, self.labels = x, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input": self.x[i], "label": int(self.labels[i]), "index": i,
                "failures": ["x.mp4"] if i == 0 else []}


def test_evaluation_aggregates_views_reports_each_view_and_merges_shards():
    view_logits = torch.tensor([[[5.0, 0, 0], [0, 1, 0]],  # views disagree: mean softmax -> class 0
                                [[0, 0, 3.0], [0, 0, 3.0]],
                                [[0, 2.0, 0], [3.0, 0, 0]]])  # -> class 0 (softmax mean), label 1
    x = torch.zeros(3, 2, 3, 2, 1, 1)
    x.view(3, 2, -1)[:, :, :3] = view_logits
    data = _Items(x, [0, 2, 1])
    task = Task(load_recipe({"task": "classification", "model": {"name": "m"},
                             "data": {"builder": "x:y"}, "train": {"batch_size": 2, "num_workers": 0}}),
                {"num_classes": 3, "classes": ["a", "b", "c"]})
    model = _FixedViews()

    def shard(indices):  # the engine's batches of these samples (eval.batch_size from train.batch_size)
        return task.evaluate(model, data, eval_batches(task, data, DistInfo(), indices))

    one = task.merge(data, [shard(range(3))])
    two = task.merge(data, [shard([1]), shard([0, 2])])
    for m in (one, two):
        assert m["num_views"] == 2 and m["top1"] == pytest.approx(2 / 3)
        assert m["per_view_top1"] == pytest.approx([1.0, 1 / 3])  # each view alone: 3/3 and 1/3 right
        assert m["failures"] == ["x.mp4"]
    assert one["loss"] == pytest.approx(two["loss"])
