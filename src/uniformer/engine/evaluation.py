"""Evaluation: run a model over a split (one or several views per sample) and score it on every process's share.

Each process scores its shard (no padding), per-sample probabilities are gathered, ordered by
dataset index and scored once, so the numbers do not depend on how many processes ran. For
multi-view test items (V×C×T×H×W) the softmax of each view is averaged; the accuracy of each
single view is reported too, showing what the extra views buy.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from uniformer.engine.distributed import (
    DistInfo,
    all_gather_objects,
    cpu_threads,
    init_distributed,
    shutdown_distributed,
)
from uniformer.engine.loaders import build_eval_loader, build_split
from uniformer.engine.metrics import classification_metrics
from uniformer.engine.precision import resolve_dtype
from uniformer.engine.reporting import log_to, plot_confusion_matrix, write_json
from uniformer.tasks.classification import build_model, load_weights, model_input_ndim, view_logits

__all__ = ["Predictions", "predict_loader", "score_predictions", "autocast_context", "resolve_amp",
           "evaluate_checkpoint"]

_logger = logging.getLogger("uniformer.engine.evaluation")


@dataclass
class Predictions:
    """Per-sample results over a whole split (all processes), ordered by dataset index."""

    probs: torch.Tensor  # N×K, mean softmax over views
    labels: torch.Tensor  # N
    indices: torch.Tensor  # N
    num_views: int = 1
    view_correct: list[float] = field(default_factory=list)  # top-1 hits of each single view (summed)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def resolve_amp(amp: str, device: torch.device) -> str:
    """"auto" -> bf16 on GPUs that support it, fp16 on older GPUs; on CPUs bf16 only where the CPU has
    bfloat16 units, else none (float32). "bf16" on a CPU without them warns that it is emulated."""
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"train.amp = 'fp16' needs a GPU (device is {device}); use 'bf16' or 'none' on CPUs")
    names = {"auto": "auto", "none": "float32", "bf16": "bfloat16", "fp16": "float16"}
    return {"float32": "none", "bfloat16": "bf16", "float16": "fp16"}[resolve_dtype(names[amp], device)]


def autocast_context(device: torch.device, amp: str):
    """`torch.autocast` for "bf16" / "fp16", nothing for "none"."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_loader(model: nn.Module, loader, dist_info: DistInfo, amp: str = "none", desc: str = "eval",
                   show_progress: bool = True, logger: logging.Logger | None = None) -> Predictions:
    """Probabilities of every sample of the loader's dataset, gathered from all processes."""
    logger = logger or _logger
    was_training = model.training
    model.eval()
    expected = model_input_ndim(model)
    device = dist_info.device
    probs, labels, indices, failures = [], [], [], []
    view_correct: list[float] = []
    num_views = 1
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=not (show_progress and dist_info.is_main))
    try:
        for batch in bar:
            if batch.get("failures"):
                failures += list(batch["failures"])
                logger.warning("%s: replaced unreadable sample(s): %s", desc, ", ".join(batch["failures"]))
            x = batch["input"].to(device, non_blocking=True)
            y = batch["label"].to(device)
            with autocast_context(device, amp):
                logits = view_logits(model, x, expected)  # B×V×K
            logits = logits.float()
            num_views = logits.shape[1]
            view_hits = logits.argmax(-1).eq(y.view(-1, 1)).sum(0).double().cpu().tolist()
            view_correct = [a + b for a, b in zip(view_correct, view_hits)] if view_correct else view_hits
            probs.append(logits.softmax(-1).mean(1).cpu())
            labels.append(batch["label"].cpu())
            indices.append(batch["index"].cpu())
    finally:
        bar.close()
        model.train(was_training)
    local = {
        "probs": torch.cat(probs) if probs else torch.empty(0, 0),
        "labels": torch.cat(labels) if labels else torch.empty(0, dtype=torch.long),
        "indices": torch.cat(indices) if indices else torch.empty(0, dtype=torch.long),
        "view_correct": view_correct, "num_views": num_views, "failures": failures,
    }
    parts = all_gather_objects(local) if dist_info.distributed else [local]
    parts_with_data = [p for p in parts if p["probs"].numel()]
    if not parts_with_data:
        raise ValueError(f"{desc}: the split produced no samples")
    all_probs = torch.cat([p["probs"] for p in parts_with_data])
    all_labels = torch.cat([p["labels"] for p in parts_with_data]).long()
    all_indices = torch.cat([p["indices"] for p in parts_with_data]).long()
    order = all_indices.argsort()
    views = max(p["num_views"] for p in parts_with_data)
    correct = [0.0] * views
    for p in parts_with_data:
        correct = [a + b for a, b in zip(correct, p["view_correct"])]
    return Predictions(probs=all_probs[order], labels=all_labels[order], indices=all_indices[order],
                       num_views=views, view_correct=correct,
                       failures=[f for p in parts for f in p["failures"]], seconds=time.perf_counter() - start)


def score_predictions(pred: Predictions, class_names: Sequence[str] | None = None) -> dict:
    """Metrics of gathered predictions: top1/top5/mean_class_acc/loss (+ per-view top-1, failures)."""
    metrics = classification_metrics(pred.probs, pred.labels, class_names)
    n = max(1, len(pred.labels))
    metrics["num_views"] = pred.num_views
    metrics["per_view_top1"] = [c / n for c in pred.view_correct]
    metrics["single_view_top1"] = sum(metrics["per_view_top1"]) / max(1, len(metrics["per_view_top1"]))
    metrics["failures"] = list(pred.failures)
    metrics["seconds"] = pred.seconds
    return metrics


def summary_line(metrics: Mapping, prefix: str = "") -> str:
    return (f"{prefix}top1 {metrics['top1']:.4f}  top5 {metrics['top5']:.4f}  "
            f"mean-class {metrics['mean_class_acc']:.4f}  loss {metrics['loss']:.4f}  "
            f"({metrics['num_samples']} samples x {metrics['num_views']} view(s))")


def evaluate_checkpoint(cfg: Mapping, checkpoint: str | os.PathLike, *, split: str | None = None,
                        device: str | None = None, use_ema: bool | None = None,
                        output: str | os.PathLike | None = None, batch_size: int | None = None,
                        show_progress: bool = True) -> dict:
    """Score `checkpoint` on a split of the recipe's data (default `eval.split`); multi-view test items
    are averaged over views. Writes the metrics as JSON (default: `eval_<split>.json` beside the
    checkpoint) and a confusion-matrix PNG beside it; returns the metrics."""
    checkpoint = Path(checkpoint)
    split = split or cfg["eval"]["split"]
    use_ema = cfg["eval"]["use_ema"] if use_ema is None else use_ema
    d = init_distributed(device)
    try:
        with log_to(None, d.is_main, d.rank) as log, cpu_threads(cfg["train"]["threads"]):
            dataset = build_split(cfg["data"], split)
            num_classes = int(dataset.num_classes)
            classes = [str(c) for c in getattr(dataset, "classes", None) or range(num_classes)]
            model = build_model(cfg["model"], num_classes, for_training=False)
            meta = load_weights(model, checkpoint, use_ema=use_ema)
            model.to(d.device).eval()
            amp = resolve_amp(cfg["train"]["amp"], d.device)
            data_cfg = cfg["data"]
            bs = batch_size or cfg["eval"]["batch_size"] or int(data_cfg.get("batch_size", 8))
            workers = cfg["eval"]["num_workers"]
            workers = int(data_cfg.get("num_workers", 4)) if workers is None else workers
            loader = build_eval_loader(dataset, data_cfg, bs, workers, d.rank, d.world_size, d.device)
            pred = predict_loader(model, loader, d, amp, desc=f"eval {split}", show_progress=show_progress,
                                  logger=log)
            m = score_predictions(pred, classes)
            result = {"checkpoint": str(checkpoint), "split": split, "weights": "ema" if use_ema else "model",
                      "epoch": meta.get("epoch"), "model": cfg["model"]["name"],
                      **{k: v for k, v in m.items() if k != "confusion"}}
            if d.is_main:
                out = Path(output) if output else checkpoint.parent / f"eval_{split}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                write_json(out, result)
                plot_confusion_matrix(m["confusion"], classes, out.with_name(out.stem + "_confusion.png"),
                                      title=f"{checkpoint.name} on {split} (rows: true class, normalised)")
                result["output"] = str(out)
                log.info("%s", summary_line(m, f"{split}: "))
                if m["failures"]:
                    log.warning("%d unreadable sample(s) replaced: %s", len(m["failures"]), ", ".join(m["failures"]))
            return result
    finally:
        shutdown_distributed(d)
