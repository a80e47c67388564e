"""Semantic segmentation with UniFormer backbones (ADE20K recipes of the paper: Semantic FPN, UperNet).

Entry points (plain Python; `cfg` is a recipe path, a mapping in recipe layout, or a resolved recipe):

    default_config() -> dict
    load_config(source=None, overrides=()) -> dict          # defaults <- YAML <- "a.b=value" overrides
    build_model(cfg) -> Segmentor                           # backbone + (neck) + decode (+ auxiliary) head
    build_datasets(cfg, splits=("train", "val")) -> dict[str, SegDataset]
    train(cfg, out_dir, resume=None) -> dict                # resume: None, "auto" or a last.pt path
    evaluate(cfg, checkpoint, split="val", out_dir=None, limit=None) -> dict   # mIoU, mAcc, aAcc, per-class IoU / Acc
    predict(cfg_or_model, checkpoint, inputs, out_dir) -> list[dict]  # <stem>_seg.png, <stem>_labels.png, <stem>.json
    complexity(variants=..., heads=..., input_size=(512, 2048)) -> list[dict]  # parameters and GFLOPs
    # synthetic shapes: train, evaluate, metrics.json
    demo(out_dir, data_dir=None, overrides=()) -> dict

Recipe schema (defaults in `default_config()`; every key must exist there):

    model:  backbone {name, stage3 global|window|hybrid, window_size, drop_path_rate, pretrained (a backbone
            or ImageNet checkpoint), kwargs}, head upernet|fpn, channels, neck_channels, pool_scales, dropout,
            aux_head, aux_channels, aux_in_index, aux_weight, checkpoint (a full segmentor checkpoint: ours
            or an original mmseg one), skip_mismatched
    data:   format ade20k|folder, root, train/val {images, masks, split}, classes (list or file),
            num_classes, reduce_zero_label (null: true for ade20k), ignore_index, img_suffix, mask_suffix,
            img_scale, ratio_range, crop_size, cat_max_ratio, flip_prob, photometric, mean, std
    train:  iters | epochs, batch_size, num_workers, log_every, eval_every, checkpoint_every, seed, threads,
            clip_grad, max_iters
    optim:  lr, weight_decay, betas, no_decay_keys, no_decay_1d
    sched:  name step|poly|cosine|constant, warmup_iters, warmup_ratio, power, min_lr, steps, gamma
    test:   mode whole|slide, crop_size, stride, scales (ratios of img_scale), flip, size_divisor (null, or
            resize each side on to a multiple of it after the keep-ratio resize: the Semantic FPN AlignResize)
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from ..dense.config import load_config as _load_config
from ..dense.engine import train_loop, write_json
from ..dense.io import readable_images
from ..dense.visualize import draw_label_map
from ..dense.weights import load_task_weights, model_and_recipe
from .data import SegDataset, read_classes, seg_collate
from .evaluation import SegMetric, infer_probs
from .heads import FCNHead, FPNHead, FPNNeck, Segmentor, UPerHead

__all__ = ["default_config", "load_config", "build_model", "build_datasets", "train", "evaluate", "predict",
           "complexity", "demo"]

TASK = "segmentation"
_logger = logging.getLogger("uniformer.tasks.segmentation")

def default_config() -> dict:
    """A fresh copy of every default of this task's recipes (the schema: a key not here is an error)."""
    return {
        "task": TASK,
        "description": "",
        "model": {
            "backbone": {"name": "uniformer_small", "stage3": "global", "window_size": 32, "drop_path_rate": 0.1,
                         "pretrained": None, "kwargs": {}},
            "head": "upernet", "channels": 512, "neck_channels": 256, "pool_scales": [1, 2, 3, 6], "dropout": 0.1,
            "aux_head": True, "aux_channels": 256, "aux_in_index": 2, "aux_weight": 0.4,
            "checkpoint": None, "skip_mismatched": False,
        },
        "data": {
            "format": "ade20k", "root": "data/ade/ADEChallengeData2016",
            "train": {"images": None, "masks": None, "split": None},
            "val": {"images": None, "masks": None, "split": None},
            "classes": None, "num_classes": 150, "reduce_zero_label": None, "ignore_index": 255,
            "img_suffix": None, "mask_suffix": ".png",
            "img_scale": [2048, 512], "ratio_range": [0.5, 2.0], "crop_size": [512, 512], "cat_max_ratio": 0.75,
            "flip_prob": 0.5, "photometric": True,
            "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
        },
        "train": {"iters": 160000, "epochs": None, "batch_size": 16, "num_workers": 4, "log_every": 50,
                  "eval_every": None, "checkpoint_every": 8000, "seed": 0, "threads": None, "clip_grad": None,
                  "max_iters": None},
        "optim": {"lr": 6e-5, "weight_decay": 0.01, "betas": [0.9, 0.999], "no_decay_keys": [], "no_decay_1d": False},
        "sched": {"name": "poly", "warmup_iters": 1500, "warmup_ratio": 1e-6, "power": 1.0, "min_lr": 0.0,
                  "steps": [], "gamma": 0.1},
        "test": {"mode": "whole", "crop_size": [512, 512], "stride": [341, 341], "scales": [1.0], "flip": False,
                 "size_divisor": None},
    }


def load_config(source: str | os.PathLike | Mapping | None = None, overrides: Sequence[str] = ()) -> dict:
    """Resolve a segmentation recipe (see the module docstring for its keys)."""
    return _load_config(source, overrides, defaults=default_config(), task=TASK)


def _cfg(cfg) -> dict:
    return load_config(cfg)


# --- model ---------------------------------------------------------------------------------------------
def build_model(cfg) -> Segmentor:
    """The segmentor a recipe describes; `model.checkpoint` (ours or an original mmseg file) is loaded."""
    import uniformer

    cfg = _cfg(cfg)
    m = cfg["model"]
    b = m["backbone"]
    num_classes = len(read_classes(cfg["data"], cfg))
    backbone = uniformer.create_model(
        b["name"], features_only=True, stage3=b["stage3"], window_size=int(b["window_size"]),
        drop_path_rate=float(b["drop_path_rate"]), checkpoint_path=b["pretrained"], **(b["kwargs"] or {}))
    chans = backbone.feature_info.channels()
    if len(chans) != 4:
        raise ValueError("model.backbone: the segmentation heads need all four stage maps (out_indices 0..3)")
    neck = aux = None
    if m["head"] == "upernet":
        head = UPerHead(chans, int(m["channels"]), num_classes, m["pool_scales"], float(m["dropout"]))
    elif m["head"] == "fpn":
        neck = FPNNeck(chans, int(m["neck_channels"]))
        head = FPNHead([int(m["neck_channels"])] * 4, int(m["channels"]), num_classes, dropout=float(m["dropout"]))
    else:
        raise ValueError(f"model.head={m['head']!r}: expected 'upernet' or 'fpn'")
    if m["aux_head"]:
        aux = FCNHead(chans[int(m["aux_in_index"])], int(m["aux_channels"]), num_classes, dropout=float(m["dropout"]))
    model = Segmentor(backbone, head, neck, aux, int(m["aux_in_index"]), float(m["aux_weight"]),
                      int(cfg["data"]["ignore_index"]), num_classes)
    if m["checkpoint"]:
        load_task_weights(model, m["checkpoint"], task=TASK, skip_mismatched=bool(m["skip_mismatched"]))
    return model


def build_datasets(cfg, splits: Sequence[str] = ("train", "val")) -> dict[str, SegDataset]:
    cfg = _cfg(cfg)
    return {s: SegDataset(cfg, s) for s in splits}


# --- training and evaluation -------------------------------------------------------------------------------
def _loss(model: Segmentor, batch: dict) -> dict:
    device = next(model.parameters()).device
    return model.losses(batch["img"].to(device), batch["seg"].to(device))


def _evaluate_model(model: Segmentor, cfg: dict, dataset: SegDataset, limit: int | None = None) -> dict:
    metric = SegMetric(dataset.num_classes, dataset.ignore_index, dataset.classes)
    skipped = []
    n = 0
    t0 = time.perf_counter()
    for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
        sample = dataset[i]
        if sample is None:
            skipped.append(dataset.samples[i][0])
            continue
        probs = infer_probs(model, sample["image"], cfg["data"], cfg["test"], dataset.num_classes)
        metric.update(probs.argmax(0).cpu(), sample["seg"])
        n += 1
    out = metric.compute()
    out.update({"num_images": n, "skipped": skipped, "eval_time_s": time.perf_counter() - t0})
    return out


def train(cfg, out_dir: str | os.PathLike, resume: str | os.PathLike | None = None) -> dict:
    """Train on `data.train`, evaluate on `data.val` (if present) at the end; writes last.pt, final.pt,
    log.jsonl and metrics.json to `out_dir`. Returns the loop's summary (history, metrics, skipped)."""
    cfg = _cfg(cfg)
    model = build_model(cfg)
    sets = build_datasets(cfg, ["train"])
    val = _maybe_val(cfg)
    min_batch = 2 if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) else 1
    return train_loop(model, sets["train"], seg_collate, _loss, cfg, out_dir, task=TASK, resume=resume,
                      evaluate_fn=(lambda mdl: _evaluate_model(mdl, cfg, val)) if val is not None else None,
                      meta={"classes": sets["train"].classes}, min_batch=min_batch,
                      batch_size_of=lambda b: len(b["ids"]))


def _maybe_val(cfg: dict) -> SegDataset | None:
    d = cfg["data"]
    if d["format"] == "folder" and not (d.get("val") or {}).get("images"):
        return None
    return SegDataset(cfg, "val", train=False)


def _model_and_cfg(cfg_or_model, checkpoint) -> tuple[Segmentor, dict]:
    return model_and_recipe(cfg_or_model, checkpoint, task=TASK, resolve=_cfg, build=build_model)


def evaluate(cfg, checkpoint: str | os.PathLike | None, split: str = "val", out_dir: str | os.PathLike | None = None,
             limit: int | None = None) -> dict:
    """mIoU, mAcc, aAcc and per-class IoU / accuracy of a checkpoint on a split (written to out_dir/metrics.json)."""
    model, cfg = _model_and_cfg(cfg, checkpoint)
    dataset = SegDataset(cfg, split, train=False)
    metrics = _evaluate_model(model, cfg, dataset, limit)
    if out_dir is not None:
        write_json(metrics, Path(out_dir) / "metrics.json")
    return metrics


def predict(cfg_or_model, checkpoint, inputs, out_dir: str | os.PathLike) -> list[dict]:
    """Label maps for an image, a folder or a list: `<stem>_seg.png` (classes over the image),
    `<stem>_labels.png` (class indices) and `<stem>.json` per image, plus predictions.json."""
    model, cfg = _model_and_cfg(cfg_or_model, checkpoint)
    classes = read_classes(cfg["data"], cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path, image in readable_images(inputs, results):
        labels = infer_probs(model, image, cfg["data"], cfg["test"], len(classes)).argmax(0).cpu().numpy()
        draw_label_map(image, labels, len(classes)).save(out_dir / f"{path.stem}_seg.png")
        Image.fromarray(labels.astype(np.uint8 if len(classes) <= 256 else np.uint16)).save(
            out_dir / f"{path.stem}_labels.png")
        ids, counts = np.unique(labels, return_counts=True)
        record = {"image": str(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
                  "picture": str(out_dir / f"{path.stem}_seg.png"), "labels": str(out_dir / f"{path.stem}_labels.png"),
                  "classes": [{"id": int(i), "name": classes[int(i)], "pixels": int(c),
                               "fraction": float(c / labels.size)} for i, c in zip(ids, counts)]}
        write_json(record, out_dir / f"{path.stem}.json")
        results.append(record)
    write_json(results, out_dir / "predictions.json")
    return results


# --- complexity ----------------------------------------------------------------------------------------------
def complexity(variants: Sequence[str] = ("uniformer_small", "uniformer_base"),
               heads: Sequence[str] = ("fpn", "upernet"), input_size: Sequence[int] = (512, 2048),
               stage3: str = "global", num_classes: int = 150) -> list[dict]:
    """Parameters and GFLOPs (multiply-adds, batch of one) of the composed segmentors at `input_size`."""
    from uniformer.profiling import count_gflops, count_params

    rows = []
    for variant in variants:
        for head in heads:
            cfg = load_config({"model": {"backbone": {"name": variant, "stage3": stage3}, "head": head,
                                         "channels": 512 if head == "upernet" else 128,
                                         "aux_head": head == "upernet"},
                               "data": {"num_classes": num_classes}})
            model = build_model(cfg).eval()
            infer_params = count_params(model) - (count_params(model.auxiliary_head) if head == "upernet" else 0)
            rows.append({"model": f"{variant} + {head}", "stage3": stage3, "input": list(input_size),
                         "params": count_params(model), "params_inference": infer_params,
                         "gflops": count_gflops(model, (3, *input_size))})
    return rows


# --- demo ----------------------------------------------------------------------------------------------------
def demo_config(data_root: str | os.PathLike) -> dict:
    """The demo's recipe: a tiny UniFormer + Semantic FPN on 96×96 synthetic shapes."""
    return load_config({
        "description": "demo: tiny UniFormer + Semantic FPN on synthetic shapes",
        "model": {"backbone": {"name": "uniformer_small", "stage3": "global", "drop_path_rate": 0.0,
                               "kwargs": {"depths": [1, 1, 2, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}},
                  "head": "fpn", "channels": 32, "neck_channels": 64, "aux_head": False, "dropout": 0.0},
        "data": {"format": "folder", "root": str(data_root), "classes": "classes.txt", "num_classes": None,
                 "train": {"images": "images/train", "masks": "masks/train"},
                 "val": {"images": "images/val", "masks": "masks/val"},
                 "img_scale": [96, 96], "ratio_range": [0.75, 1.5], "crop_size": [96, 96], "cat_max_ratio": 1.0},
        "train": {"iters": 2000, "batch_size": 8, "num_workers": 0, "log_every": 50, "checkpoint_every": 500,
                  "threads": 1},
        "optim": {"lr": 2e-3, "weight_decay": 0.01},
        "sched": {"name": "poly", "warmup_iters": 50, "warmup_ratio": 0.01, "power": 1.0, "min_lr": 1e-5},
        "test": {"mode": "whole"},
    })


def demo(out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict:
    """Generate (once) synthetic shapes in the folder layout, train a tiny UniFormer + Semantic FPN,
    evaluate mIoU, write out_dir/metrics.json and example pictures in out_dir/examples."""
    from ..dense.synthetic import default_cache, write_shapes_segmentation

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    root = write_shapes_segmentation(data_dir or default_cache(TASK))
    cfg = load_config(demo_config(root), overrides)
    summary = train(cfg, out_dir)
    metrics = summary["metrics"]
    examples = sorted((root / "images" / "val").iterdir())[:4]
    predict(cfg, out_dir / "final.pt", examples, out_dir / "examples")
    result = {"task": TASK, "mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"], "aAcc": metrics["aAcc"],
              "per_class": metrics["per_class"], "iters": summary["iters"], "train_time_s": summary["train_time_s"],
              "wall_time_s": time.perf_counter() - t0, "data": str(root), "bar": {"mIoU": 0.5},
              "passed": bool(metrics["mIoU"] >= 0.5)}
    write_json(result, out_dir / "metrics.json")
    return result
