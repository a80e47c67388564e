"""Classification as the engine's `Task`: datasets of `uniformer.data`, Mixup/CutMix, top-k scores, confusion matrix.

Recipe sections of this task (on top of the engine's):

    model:  name (required: a variant or 'package.module:factory'), pretrained [false], checkpoint [null],
            inflate ["average"], drop_path_rate [0.0], grad_checkpointing [false], kwargs [{}]
    data:   the keys of `uniformer.data` (format, root, lists, clip sampling, augmentation, test views,
            mixup / cutmix / label_smoothing, ...); or `builder: "package.module:function"` (called as
            function(data_cfg, split)) and free keys for a custom dataset
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from uniformer.engine.config import ConfigError, check, expand_path
from uniformer.engine.loaders import resolve_callable

from .metrics import classification_metrics, view_probabilities
from .model import (
    build_model,
    classification_loss,
    data_file,
    load_weights,
    merge_outputs,
    model_input_ndim,
    model_spec,
    named_classes,
    read_class_names,
    view_logits,
)

_MOVED = {"batch_size": "train.batch_size", "num_workers": "train.num_workers", "pin_memory": "train.pin_memory",
          "prefetch_factor": "train.prefetch_factor"}


class Task:
    """Image and video classification (see the module docstring for the recipe sections)."""

    name = "classification"
    min_batch = 1

    def __init__(self, cfg: Mapping, meta: Mapping | None = None):
        self.cfg = dict(cfg)
        self.meta = dict(meta or {})
        self._collate = None
        self.mixup = None

    @staticmethod
    def defaults() -> dict:
        return {
            "task": "classification",
            "model": {"name": None, "pretrained": False, "checkpoint": None, "inflate": "average",
                      "drop_path_rate": 0.0, "grad_checkpointing": False, "kwargs": {}},
            "data": {},
            "train": {"epochs": 1},
            "checkpoint": {"best_metric": "val_top1"},
            "eval": {"split": "test"},
        }

    @staticmethod
    def validate(cfg: dict, where: str) -> None:
        from uniformer.data import build_mixup, resolved_data_config
        from uniformer.data.config import PATH_KEYS

        m, data = cfg["model"], cfg["data"]
        check(isinstance(m["name"], str) and bool(m["name"]), where, "model.name", m["name"],
              "name a model variant, e.g. uniformer_video_small (or 'package.module:factory')")
        check(isinstance(m["kwargs"], dict), where, "model.kwargs", m["kwargs"], "expected a mapping")
        check(isinstance(m["drop_path_rate"], int | float) and 0 <= m["drop_path_rate"] < 1, where,
              "model.drop_path_rate", m["drop_path_rate"], "expected a number in [0, 1)")
        check(m["checkpoint"] is None or isinstance(m["checkpoint"], str), where, "model.checkpoint",
              m["checkpoint"], "expected a file path or null")
        check(isinstance(data, dict) and bool(data), where, "data", data, "the data section is required")
        for key, new in _MOVED.items():
            if key in data:
                raise ConfigError(f"{where}: data.{key} is now {new} (the same name for every task)")
        for key in PATH_KEYS:
            if key in data:
                data[key] = expand_path(data[key])
        if m["checkpoint"]:
            m["checkpoint"] = expand_path(m["checkpoint"])
        if data.get("builder"):
            return  # a custom dataset owns its keys
        try:
            build_mixup(data, 2)
            # every key with its default, so that the run's config.yaml shows what was used
            cfg["data"] = data = resolved_data_config(data)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        batch = cfg["train"]["batch_size"]
        if isinstance(batch, int) and batch % data["num_sample"]:
            raise ConfigError(f"{where}: train.batch_size = {batch} counts clips and must be a multiple of "
                              f"data.num_sample = {data['num_sample']} (each video gives that many clips per step)")

    # --- data ------------------------------------------------------------------------------------------
    def _data_cfg(self) -> dict:
        return {k: v for k, v in self.cfg["data"].items() if k != "builder"}

    def _dataset(self, split: str):
        from uniformer.data import build_dataset

        builder = self.cfg["data"].get("builder")
        dataset = (resolve_callable(builder, "data.builder") if builder else build_dataset)(self._data_cfg(), split)
        if len(dataset) == 0:
            raise ValueError(f"the {split} split of the dataset is empty")
        return dataset

    def build_datasets(self, splits: Sequence[str]) -> dict:
        from uniformer.data import build_mixup, collate

        sets = {split: self._dataset(split) for split in splits}
        first = sets[splits[0]]
        self._collate = getattr(first, "collate", None) or collate
        num_classes = int(getattr(first, "num_classes", 0) or 0)
        training = "train" in sets
        if training and num_classes < 1:
            raise ValueError("the training dataset does not say how many classes it has (num_classes)")
        if training or not self.meta:
            unnamed = [f"class_{i}" for i in range(num_classes)] if training else range(num_classes)
            classes = [str(c) for c in getattr(first, "classes", None) or unnamed]
            self.meta = {"num_classes": num_classes, "classes": classes, "model_spec": model_spec(self.cfg["model"])}
        if training:
            self.mixup = build_mixup(self._data_cfg(), num_classes)
        return sets

    def collate(self, samples: list):
        if self._collate is None:
            from uniformer.data import collate

            self._collate = collate
        return self._collate(samples)

    def batch_size(self, batch) -> int:
        return int(batch["input"].shape[0])

    # --- model -------------------------------------------------------------------------------------------
    def build_model(self, for_training: bool = True) -> nn.Module:
        return build_model(self.cfg["model"], int(self.meta["num_classes"]), for_training=for_training)

    def load_weights(self, model: nn.Module, path, use_ema: bool = False) -> None:
        load_weights(model, path, use_ema=use_ema)

    def training_step(self, model: nn.Module, batch: Mapping) -> dict:
        x, y = batch["input"], batch["label"]
        x, target = self.mixup(x, y) if self.mixup is not None else (x, y)
        outputs = model(x)
        out = {"loss": classification_loss(outputs, target, float(self.cfg["data"].get("label_smoothing") or 0.0))}
        if self.mixup is None:
            out["top1"] = merge_outputs(outputs).detach().argmax(-1).eq(y).float().mean()
        return out

    # --- evaluation ----------------------------------------------------------------------------------------
    def eval_defaults(self) -> tuple[int, int]:
        return int(self.cfg["train"]["batch_size"]), int(self.cfg["train"]["num_workers"])

    def eval_collate(self, items: list):
        return self.collate([sample for _, sample in items])

    def evaluate(self, model: nn.Module, dataset, batches) -> dict:
        device = next(model.parameters()).device
        expected = model_input_ndim(model)
        aggregation = self.cfg["data"].get("view_aggregation", "sum_logits")
        probs, labels, index, failures, view_correct = [], [], [], [], []
        for batch in batches:
            failures += list(batch.get("failures") or [])
            logits = view_logits(model, batch["input"].to(device, non_blocking=True), expected).float()  # B×V×K
            hits = logits.argmax(-1).cpu().eq(batch["label"].view(-1, 1)).sum(0).double().tolist()
            view_correct = [a + b for a, b in zip(view_correct, hits)] if view_correct else hits
            probs.append(view_probabilities(logits, aggregation).cpu())
            labels.append(batch["label"].cpu())
            index.append(batch["index"].cpu())
        return {"probs": torch.cat(probs) if probs else None, "labels": torch.cat(labels) if labels else None,
                "index": torch.cat(index) if index else None, "view_correct": view_correct, "failures": failures}

    def merge(self, dataset, parts: Sequence[dict]) -> dict:
        full = [p for p in parts if p["probs"] is not None]
        if not full:
            raise ValueError("the evaluation split produced no samples")
        order = torch.cat([p["index"] for p in full]).argsort()
        probs, labels = torch.cat([p["probs"] for p in full])[order], torch.cat([p["labels"] for p in full])[order]
        views = max(len(p["view_correct"]) for p in full)
        correct = [sum(p["view_correct"][v] for p in full if len(p["view_correct"]) > v) for v in range(views)]
        metrics = classification_metrics(probs, labels.long(), self.meta.get("classes"))
        n = max(1, len(labels))
        metrics["num_views"] = views
        metrics["per_view_top1"] = [c / n for c in correct]
        metrics["single_view_top1"] = sum(metrics["per_view_top1"]) / max(1, views)
        metrics["failures"] = [f for p in parts for f in p["failures"]]
        metrics["confusion"] = metrics["confusion"].tolist()
        return metrics

    def write_pictures(self, folder: Path, metrics: Mapping, prefix: str = "") -> None:
        from .metrics import plot_confusion_matrix

        plot_confusion_matrix(torch.tensor(metrics["confusion"]), self.meta.get("classes"),
                              Path(folder) / f"{prefix}confusion_matrix.png")

    # --- demo ----------------------------------------------------------------------------------------------
    demo_bar = {"top1": 0.9}

    def prepare_demo(self, root: Path) -> None:
        """Generate (once) the built-in demo videos under `root` (the demo recipe's data.root)."""
        from uniformer.data import generate_demo_dataset

        generate_demo_dataset(root)

    def demo_examples(self, model: nn.Module, out_dir: Path, show: int = 8) -> list[dict]:
        """Predictions for a few validation clips of each class (printed by `uniformer demo`)."""
        data = self.cfg["data"]
        entries = [ln.rsplit(None, 1) for ln in data_file(data, "val_list").read_text().splitlines() if ln.strip()]
        by_class: dict[str, list] = {}
        for entry in entries:
            by_class.setdefault(entry[1], []).append(entry)
        picks = [group[i] for i in range(len(entries)) for group in by_class.values() if i < len(group)][:show]
        results = self.predict(model, [str(Path(data["root"]) / p) for p, _ in picks], topk=2)
        for (_, label), r in zip(picks, results):
            r["true"] = self.classes[int(label)]
        return results

    # --- inference -----------------------------------------------------------------------------------------
    predict_options = ("topk",)

    @property
    def classes(self) -> list[str]:
        return named_classes(self.meta.get("classes") or [], int(self.meta["num_classes"]))

    def configure_inference(self, labels: str | None = None, data: Mapping | None = None) -> None:
        """`--labels` (class names, one per line) and `--data` (test-view keys) of predict and serve."""
        if labels:
            self.meta = {**self.meta, "classes": read_class_names(labels, expected=int(self.meta["num_classes"])),
                         "dataset": None}
        self._data_overrides = dict(data or {})

    def data_view(self, model: nn.Module) -> dict:
        """The `data:` keys prediction reads files with (the recipe's test view, `--data` on top)."""
        from .predict import inference_data_cfg

        return inference_data_cfg(self.cfg["data"], model_input_ndim(model) == 5,
                                  getattr(self, "_data_overrides", None))

    def draw(self, image, output: Sequence[dict], title: str = ""):
        """The picture of a prediction: the frames the model saw (T×H×W×3 uint8, `visualize.sampled_frames`)
        above the top classes (`output`: the `predictions` of a record)."""
        import io

        from PIL import Image

        from .visualize import save_prediction_figure

        buffer = io.BytesIO()
        save_prediction_figure(buffer, image, output[:5], title)
        buffer.seek(0)
        return Image.open(buffer)

    def predict(self, model: nn.Module, inputs: Sequence[str], out_dir: str | Path | None = None, *,
                topk: int | None = None, dtype: str = "float32") -> list[dict]:
        """Top-k classes of image / video files through the data pipeline's test split; with `out_dir`, a
        figure per input (sampled frames and the top five classes)."""
        from .predict import predict_paths

        return predict_paths(model, [str(p) for p in inputs], self.classes, self.data_view(model),
                             model_input_ndim(model) == 5, topk or 5, out_dir, dtype)
