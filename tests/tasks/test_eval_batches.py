"""Evaluation through the engine's one function for every task: `eval.batch_size` / `eval.num_workers` (what
`uniformer eval --batch-size / --num-workers` set) shape the batches each task evaluates, and leave its metrics
as they are."""
from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import tiny_uniformer, write_moving_videos
from test_runner_tasks import _recipes

from uniformer.engine.distributed import DistInfo
from uniformer.engine.runner import eval_batches, evaluate_model
from uniformer.tasks import build_task, load_recipe


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_batches")
    out = _recipes(root)
    data = write_moving_videos(root / "videos", n_train=2, n_val=3)
    out["classification"] = {"task": "classification", "model": tiny_uniformer(), "data": data,
                             "train": {"epochs": 1, "batch_size": 2, "num_workers": 0, "threads": 1}}
    return out


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@pytest.mark.parametrize("name", ["classification", "detection", "segmentation", "pose"])
def test_eval_batch_size_and_workers_act_for_every_task(recipes, name):
    torch.manual_seed(0)
    task = build_task(load_recipe(recipes[name]))
    val = task.build_datasets(["train", "val"])["val"]
    model = task.build_model(for_training=False).eval()
    sizes: list[int] = []
    collate = task.eval_collate

    def counted(items):
        sizes.append(len(items))
        return collate(items)

    task.eval_collate = counted
    before = evaluate_model(task, model, val, DistInfo())  # the task's defaults
    default_batch, _ = task.eval_defaults()
    assert sizes[0] == min(default_batch, len(val)) and sum(sizes) == len(val)

    task.cfg["eval"].update(batch_size=2, num_workers=1)
    loader = eval_batches(task, val, DistInfo())
    assert (loader.batch_size, loader.num_workers) == (2, 1)
    assert len(list(loader)) == math.ceil(len(val) / 2)  # collated in the worker process
    after = evaluate_model(task, model, val, DistInfo())
    for key, value in _scalars(before).items():  # the same predictions, batched otherwise
        assert after[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
