"""What the dense tasks' `Task` classes share: engine defaults of the mmcv recipes, weight loading, demo data."""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

import uniformer
from uniformer.engine.config import check, load_config, merge
from uniformer.engine.reporting import write_json

from .io import readable_images, resolve_path
from .weights import load_task_weights

__all__ = ["DenseTask"]

# Engine defaults the mmdet / mmseg / mmpose recipes change: decay on 1-D parameters too (`no_decay_keys` name
# what is exempt), mmcv's warm-up as a ratio of the rate, decay to 0, evaluation only at the end (or every
# `train.eval_every`).
_MMCV_DEFAULTS = {
    "optim": {"no_decay_1d": False},
    "sched": {"warmup_ratio": 0.001, "min_lr": 0.0},
    "train": {"eval_every": None, "num_workers": 2},
    "eval": {"split": "val"},
}


class DenseTask:
    """Shared behaviour of the detection, segmentation and pose tasks."""

    name = "dense"
    min_batch = 1
    schema: dict = {}  # the task's recipe sections with their defaults (a key not there or in the engine's is an error)
    dataset_class: type  # made as dataset_class(cfg, split, train=split == "train")
    meta_keys: tuple[str, ...] = ("classes",)  # what `meta` takes from the training set

    def __init__(self, cfg: Mapping, meta: Mapping | None = None):
        self.cfg = copy.deepcopy(dict(cfg))
        self.meta = dict(meta or {})

    @classmethod
    def defaults(cls) -> dict:
        """A fresh copy of this task's part of the recipe schema."""
        return merge(_MMCV_DEFAULTS, {"task": cls.name, "description": "", **cls.schema}, strict=False)

    @classmethod
    def load_recipe(cls, source: str | os.PathLike | Mapping | None, overrides: Sequence[str] | None = None) -> dict:
        """A recipe of this task (file or mapping; `task:` may be left out) resolved over its defaults."""
        return load_config(source, overrides, task_defaults=cls.defaults(), validate=cls.validate)

    @staticmethod
    def validate(cfg: dict, where: str) -> None:
        b = cfg["model"]["backbone"]
        check(isinstance(b["name"], str) and b["name"].startswith("uniformer"), where, "model.backbone.name",
              b["name"], "expected a UniFormer variant, e.g. uniformer_small")
        check(b["stage3"] in ("global", "window", "hybrid"), where, "model.backbone.stage3", b["stage3"],
              "expected global, window or hybrid")
        check(0 <= b["drop_path_rate"] < 1, where, "model.backbone.drop_path_rate", b["drop_path_rate"],
              "expected a number in [0, 1)")

    def _has_split(self, split: str) -> bool:
        """Whether the recipe has `split` (the training split is always made, to fail on what it lacks)."""
        return bool((self.cfg["data"].get(split) or {}).get("annotations"))

    def build_datasets(self, splits: Sequence[str]) -> dict:
        sets = {split: self.dataset_class(self.cfg, split, train=split == "train")
                if split == "train" or self._has_split(split) else None for split in splits}
        if sets.get("train") is not None:
            self.meta = {key: getattr(sets["train"], key) for key in self.meta_keys}
        return sets

    def eval_defaults(self) -> tuple[int, int]:
        return int(self.cfg["test"].get("batch_size", 1)), 0  # segmentation: images of many sizes, one by one

    def _backbone(self, for_training: bool, **options) -> nn.Module:
        """The UniFormer of `model.backbone` (ImageNet weights and drop path only for training)."""
        b = self.cfg["model"]["backbone"]
        return uniformer.create_model(b["name"], **options, features_only=True, stage3=b["stage3"],
                                      window_size=int(b["window_size"]),
                                      drop_path_rate=float(b["drop_path_rate"]) if for_training else 0.0,
                                      checkpoint_path=b["pretrained"] if for_training else None, **(b["kwargs"] or {}))

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

    def eval_collate(self, items: list) -> list:
        return items

    def write_pictures(self, folder: Path, metrics: Mapping, prefix: str = "") -> None:
        """The dense tasks draw example predictions instead (`demo_examples`, `predict`)."""

    predict_options: tuple[str, ...] = ()
    picture_suffix = "pred"  # <stem>_<suffix>.png

    def predict_image(self, model: nn.Module, image: np.ndarray, path: Path, **options) -> tuple[dict, Any]:
        """(JSON fields of one RGB image's prediction, the raw output `draw` takes)."""
        raise NotImplementedError

    def draw(self, image: np.ndarray, output: Any) -> Image.Image:
        """The picture of one prediction over its image."""
        raise NotImplementedError

    def save_extra(self, out_dir: Path, path: Path, output: Any, record: dict) -> None:
        """Files besides the picture and the JSON record (segmentation's label map)."""

    def predict(self, model: nn.Module, inputs, out_dir: str | os.PathLike | None = None, **options) -> list[dict]:
        """One record per image of `inputs` (files or folders; an unreadable one gets an `error`); with
        `out_dir`, `<stem>_<suffix>.png` (the picture `draw` makes) and `<stem>.json` per image, plus
        predictions.json."""
        out = Path(out_dir) if out_dir is not None else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        results: list[dict] = []
        for path, image in readable_images(inputs, results):
            with torch.no_grad():
                fields, output = self.predict_image(model, image, path, **options)
            record = {"image": str(path), "height": int(image.shape[0]), "width": int(image.shape[1])}
            if out is not None:
                picture = out / f"{path.stem}_{self.picture_suffix}.png"
                self.draw(image, output).save(picture)
                record["picture"] = str(picture)
                self.save_extra(out, path, output, record)
            record.update(fields)
            if out is not None:
                write_json(out / f"{path.stem}.json", record)
            results.append(record)
        if out is not None:
            write_json(out / "predictions.json", results)
        return results

    demo_options: Mapping[str, Any] = {}  # `predict` options of the demo's example pictures

    def demo_examples(self, model: nn.Module, out_dir: Path, show: int = 4) -> list[dict]:
        """Predictions on the first `show` validation images."""
        images = sorted(resolve_path(self.cfg, self.cfg["data"]["val"]["images"]).iterdir())[:show]
        return self.predict(model, images, out_dir, **self.demo_options)
