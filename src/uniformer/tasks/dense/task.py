"""What the dense tasks' `Task` classes share: engine defaults of the mmcv recipes, weight loading, demo data."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from uniformer.engine.config import check

from .weights import load_task_weights

__all__ = ["DenseTask", "dense_defaults", "backbone_kwargs"]


def dense_defaults() -> dict:
    """Engine defaults the original mmdet / mmseg / mmpose recipes change: decay on 1-D parameters too (the
    `no_decay_keys` name what is exempt), mmcv's warm-up as a ratio of the rate, decay to 0, evaluation at
    the end of the run (`train.eval_every` sets a period)."""
    return {
        "optim": {"no_decay_1d": False},
        "sched": {"warmup_ratio": 0.001, "min_lr": 0.0},
        "train": {"eval_every": None, "num_workers": 2},
        "eval": {"split": "val"},
    }


def backbone_kwargs(b: Mapping, for_training: bool) -> dict:
    """`uniformer.create_model` arguments of a `model.backbone` section (ImageNet weights only for training)."""
    return dict(features_only=True, stage3=b["stage3"], window_size=int(b["window_size"]),
                drop_path_rate=float(b["drop_path_rate"]) if for_training else 0.0,
                checkpoint_path=b["pretrained"] if for_training else None, **(b["kwargs"] or {}))


class DenseTask:
    """Shared behaviour of the detection, segmentation and pose tasks."""

    name = "dense"
    min_batch = 1

    def __init__(self, cfg: Mapping, meta: Mapping | None = None):
        self.cfg = copy.deepcopy(dict(cfg))
        self.meta = dict(meta or {})

    @staticmethod
    def validate(cfg: dict, where: str) -> None:
        b = cfg["model"]["backbone"]
        check(isinstance(b["name"], str) and b["name"].startswith("uniformer"), where, "model.backbone.name",
              b["name"], "expected a UniFormer variant, e.g. uniformer_small")
        check(b["stage3"] in ("global", "window", "hybrid"), where, "model.backbone.stage3", b["stage3"],
              "expected global, window or hybrid")
        check(0 <= b["drop_path_rate"] < 1, where, "model.backbone.drop_path_rate", b["drop_path_rate"],
              "expected a number in [0, 1)")

    def _weight_options(self, model: nn.Module) -> dict:
        """Extra arguments of `load_task_weights` (converter of original checkpoints, backbone location)."""
        return {}

    def load_weights(self, model: nn.Module, path, use_ema: bool = False) -> None:
        load_task_weights(model, path, task=self.name, use_ema=use_ema, **self._weight_options(model))

    def _initial_weights(self, model: nn.Module, for_training: bool) -> nn.Module:
        m = self.cfg["model"]
        if for_training and m["checkpoint"]:
            load_task_weights(model, m["checkpoint"], task=self.name, skip_mismatched=bool(m["skip_mismatched"]),
                              **self._weight_options(model))
        return model

    def write_pictures(self, folder: Path, metrics: Mapping, prefix: str = "") -> None:
        """The dense tasks draw example predictions instead (`demo_examples`, `predict`)."""


def inference_model(task_name: str, cfg, checkpoint, device: str | None = None):
    """(task, model in eval mode on `device`) for a checkpoint: the recipe recorded in one of this package's
    checkpoints, or `cfg` (a recipe path, mapping or resolved recipe) for an original toolbox file."""
    from uniformer.engine.distributed import resolve_device
    from uniformer.tasks import task_from_checkpoint

    dev = resolve_device(device)
    task = task_from_checkpoint(checkpoint, cfg, task=task_name)
    model = task.build_model(for_training=False)
    task.load_weights(model, checkpoint)
    return task, model.to(dev).eval()


def evaluate_weights(task_name: str, cfg, checkpoint, split: str = "val", out_dir=None, limit: int | None = None,
                     device: str | None = None) -> dict:
    """Metrics of a checkpoint on a split (the first `limit` samples), on one process; written to
    `out_dir/metrics.json` when given."""
    import torch

    from uniformer.engine.reporting import write_json

    task, model = inference_model(task_name, cfg, checkpoint, device)
    dataset = task.build_datasets([split])[split]
    if dataset is None:
        raise ValueError(f"the recipe has no data.{split} split")
    with torch.no_grad():
        metrics = task.merge(dataset, [task.evaluate(model, dataset, range(min(limit or len(dataset), len(dataset))))])
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
