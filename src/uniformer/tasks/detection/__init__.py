"""Object detection and instance segmentation with UniFormer backbones (COCO Mask R-CNN recipes of the paper).

Entry points (plain Python; `cfg` is a recipe path, a mapping in recipe layout, or a resolved recipe):

    default_config() -> dict
    load_config(source=None, overrides=()) -> dict
    build_model(cfg) -> Mask R-CNN or Cascade Mask R-CNN (model.type; boxes only with model.with_masks=false)
    build_datasets(cfg, splits=("train", "val")) -> dict[str, DetDataset]
    train(cfg, out_dir, resume=None) -> dict                # resume: None, "auto" or a last.pt path
    # bbox_/segm_ AP, AP50, AP75, APs, APm, APl
    evaluate(cfg, checkpoint, split="val", out_dir=None, limit=None) -> dict
    predict(cfg_or_model, checkpoint, inputs, out_dir, score_thr=0.3) -> list[dict]  # <stem>_det.png + <stem>.json
    complexity(variants=..., input_size=(800, 1280)) -> list[dict]   # parameters and GFLOPs (mmdet's counting)
    # synthetic shapes: train, evaluate, metrics.json
    demo(out_dir, data_dir=None, overrides=()) -> dict

Recipe schema (defaults in `default_config()`, the 1× schedule; every key must exist there):

    model:  backbone {name, stage3 (hybrid), window_size (14), drop_path_rate, pretrained, kwargs}, with_masks,
            type (mask_rcnn | cascade_mask_rcnn), fpn_channels, box_head_dim, mask_head_channels, anchor_sizes,
            rpn_batch, roi_batch, rpn_train_proposals / rpn_test_proposals ([per level before NMS, kept after NMS]),
            box_loss (l1 | smooth_l1 | giou for cascade), rpn_box_loss (l1 | smooth_l1), rpn_allowed_border
            (-1: every anchor trains) — null: the original config's choice for the type,
            cascade {box_head_convs, box_head_fcs, box_head_norm, class_agnostic, stage_ious, stage_loss_weights,
            stage_stds}, checkpoint (ours or an original mmdet file), skip_mismatched
    data:   root, train/val {annotations, images}, train_scales (short sides drawn per image), test_scale,
            max_size, flip_prob, crop_policy (null | detr: the 3×+MS recipe's crop branch), crop_scales,
            crop_size, mean, std
    train / optim / sched: as segmentation (1×: 12 epochs, steps at 8 and 11, AdamW 1e-4, wd 0.05, no decay on norms)
    test:   score_thresh, detections_per_img, mask_thresh, batch_size, segm_area (box: mask APs/m/l by box area
            as mmdet 2.11 | mask)
"""
from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..dense.coco import coco_ground_truth, evaluate_instances, instance_results
from ..dense.config import load_config as _load_config
from ..dense.engine import load_dense_checkpoint, train_loop, write_json
from ..dense.io import readable_images
from ..dense.visualize import draw_instances
from ..dense.weights import load_task_weights
from .data import DetDataset, det_collate
from .model import DetectorFlops, build_detector, detect, mmdet_key_converter

__all__ = ["default_config", "load_config", "build_model", "build_datasets", "train", "evaluate", "predict",
           "complexity", "demo"]

TASK = "detection"
_logger = logging.getLogger("uniformer.tasks.detection")

def default_config() -> dict:
    """A fresh copy of every default of this task's recipes (the schema: a key not here is an error)."""
    return {
        "task": TASK,
        "description": "",
        "model": {
            "backbone": {"name": "uniformer_small", "stage3": "hybrid", "window_size": 14, "drop_path_rate": 0.2,
                         "pretrained": None, "kwargs": {}},
            "with_masks": True, "fpn_channels": 256, "box_head_dim": 1024, "mask_head_channels": [256, 256, 256, 256],
            "anchor_sizes": [32, 64, 128, 256, 512], "rpn_batch": 256, "roi_batch": 512,
            "rpn_train_proposals": [2000, 1000], "rpn_test_proposals": [1000, 1000],
            "type": "mask_rcnn", "box_loss": None, "rpn_box_loss": None, "rpn_allowed_border": None,
            "cascade": {"box_head_convs": 4, "box_head_fcs": 1, "box_head_norm": True, "class_agnostic": False,
                        "stage_ious": [0.5, 0.6, 0.7], "stage_loss_weights": [1.0, 0.5, 0.25],
                        "stage_stds": [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]},
            "checkpoint": None, "skip_mismatched": False,
        },
        "data": {
            "root": "data/coco",
            "train": {"annotations": "annotations/instances_train2017.json", "images": "train2017"},
            "val": {"annotations": "annotations/instances_val2017.json", "images": "val2017"},
            "classes": None,
            "train_scales": [800], "test_scale": 800, "max_size": 1333, "flip_prob": 0.5,
            "crop_policy": None, "crop_scales": [400, 500, 600], "crop_size": [384, 600],
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        },
        "train": {"epochs": 12, "iters": None, "batch_size": 2, "num_workers": 2, "log_every": 50, "eval_every": None,
                  "checkpoint_every": 1, "seed": 0, "threads": None, "clip_grad": None, "max_iters": None},
        "optim": {"lr": 1e-4, "weight_decay": 0.05, "betas": [0.9, 0.999], "no_decay_keys": ["norm"],
                  "no_decay_1d": False},
        "sched": {"name": "step", "warmup_iters": 500, "warmup_ratio": 0.001, "steps": [8, 11], "gamma": 0.1,
                  "power": 1.0, "min_lr": 0.0},
        "test": {"score_thresh": 0.05, "detections_per_img": 100, "mask_thresh": 0.5, "batch_size": 1,
                 "segm_area": "box"},
    }


def load_config(source: str | os.PathLike | Mapping | None = None, overrides: Sequence[str] = ()) -> dict:
    """Resolve a detection recipe (see the module docstring for its keys)."""
    return _load_config(source, overrides, defaults=default_config(), task=TASK)


def _cfg(cfg) -> dict:
    return load_config(cfg)


def _class_names(cfg: dict) -> list[str]:
    """Class names: `data.classes`, else the categories of the training (or validation) annotation file."""
    if cfg["data"]["classes"]:
        return [str(c) for c in cfg["data"]["classes"]]
    import json

    from ..dense.config import resolve_path

    for split in ("train", "val"):
        ann = (cfg["data"].get(split) or {}).get("annotations")
        path = resolve_path(cfg, ann) if ann else None
        if path is not None and path.is_file():
            try:
                cats = json.loads(path.read_text()).get("categories") or []
            except ValueError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
            if cats:
                return [str(c.get("name", c["id"])) for c in cats]
    raise ValueError("data.classes: not given, and no annotation file with categories was found")


def build_model(cfg, num_classes: int | None = None) -> nn.Module:
    """The detector a recipe describes (classes from `data.classes` or the annotation file's categories);
    `model.checkpoint` (ours or an original mmdet Mask R-CNN file) is loaded."""
    import uniformer

    cfg = _cfg(cfg)
    m, b, d = cfg["model"], cfg["model"]["backbone"], cfg["data"]
    if num_classes is None:
        num_classes = len(_class_names(cfg))
    body = uniformer.create_model(
        b["name"], features_only=True, stage3=b["stage3"], window_size=int(b["window_size"]),
        drop_path_rate=float(b["drop_path_rate"]), checkpoint_path=b["pretrained"], **(b["kwargs"] or {}))
    model = build_detector(body, num_classes, m, mean=d["mean"], std=d["std"],
                           score_thresh=float(cfg["test"]["score_thresh"]),
                           detections_per_img=int(cfg["test"]["detections_per_img"]))
    if m["checkpoint"]:
        _load(model, m["checkpoint"], bool(m["skip_mismatched"]))
    return model


def _load(model: nn.Module, path, skip_mismatched: bool = False) -> dict:
    return load_task_weights(model, path, task=TASK, convert=mmdet_key_converter(model),
                             skip_mismatched=skip_mismatched, backbone=model.backbone.body,
                             backbone_prefix="backbone.body.")


def build_datasets(cfg, splits: Sequence[str] = ("train", "val")) -> dict[str, DetDataset]:
    cfg = _cfg(cfg)
    return {s: DetDataset(cfg, s) for s in splits}


def _loss(model: nn.Module, batch, cfg: dict) -> dict:
    images, targets = batch
    device = next(model.parameters()).device
    images = [im.to(device) for im in images]
    targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]
    return model(images, targets)


def _detect(model: nn.Module, images: list[np.ndarray], cfg: dict) -> list[dict]:
    """The original test pipeline on RGB uint8 images (see `model.detect`)."""
    d = cfg["data"]
    return detect(model, images, scale=(int(d["test_scale"]), int(d["max_size"])),
                  mask_thresh=float(cfg["test"]["mask_thresh"]))


def _evaluate_model(model: nn.Module, cfg: dict, dataset: DetDataset, limit: int | None = None) -> dict:
    t0 = time.perf_counter()
    ids = dataset.image_ids if limit is None else dataset.image_ids[:limit]
    bbox_results, segm_results, done, skipped = [], [], [], []
    bs = int(cfg["test"]["batch_size"])
    segm_area = str(cfg["test"]["segm_area"])
    for start in range(0, len(ids), bs):
        batch = [(i, dataset[start + k]) for k, i in enumerate(ids[start:start + bs])]
        skipped += [i for i, s in batch if s is None]
        batch = [(i, s) for i, s in batch if s is not None]
        if not batch:
            continue
        outs = _detect(model, [s[0] for _, s in batch], cfg)
        for (iid, _), out in zip(batch, outs):
            b, s = instance_results(out, iid, dataset.cat_ids, segm_area)
            bbox_results += b
            segm_results += s
            done.append(iid)
    gt = coco_ground_truth(dataset.index)
    metrics = evaluate_instances(gt, bbox_results, "bbox", done)
    if dataset.with_masks:
        metrics.update(evaluate_instances(gt, segm_results, "segm", done))
        metrics["segm_size_convention"] = (
            "box area (as mmdet 2.11: mask results carry their bbox, so pycocotools sizes them by it)"
            if segm_area == "box" else "mask area")
    metrics.update({"num_images": len(done), "num_detections": len(bbox_results), "skipped_images": skipped,
                    "eval_time_s": time.perf_counter() - t0})
    return metrics


def train(cfg, out_dir: str | os.PathLike, resume: str | os.PathLike | None = None) -> dict:
    """Train on `data.train`, evaluate box (and mask) AP on `data.val` at the end; writes last.pt, final.pt,
    log.jsonl and metrics.json to `out_dir`. Returns the loop's summary (history, metrics, skipped)."""
    cfg = _cfg(cfg)
    train_set = DetDataset(cfg, "train")
    model = build_model(cfg, num_classes=len(train_set.cat_ids))
    val = DetDataset(cfg, "val", train=False) if (cfg["data"].get("val") or {}).get("annotations") else None
    if val is not None and val.cat_ids != train_set.cat_ids:
        raise ValueError(f"{val.ann_file} and {train_set.ann_file} list different categories")
    return train_loop(model, train_set, det_collate, lambda mdl, batch: _loss(mdl, batch, cfg), cfg, out_dir,
                      task=TASK, resume=resume,
                      evaluate_fn=(lambda mdl: _evaluate_model(mdl, cfg, val)) if val is not None else None,
                      meta={"classes": train_set.classes, "cat_ids": train_set.cat_ids},
                      batch_size_of=lambda b: len(b[0]))


def _model_and_cfg(cfg_or_model, checkpoint) -> tuple[nn.Module, dict, dict]:
    meta: dict = {}
    if isinstance(cfg_or_model, nn.Module):
        cfg = getattr(cfg_or_model, "dense_cfg", None)
        if cfg is None:
            raise ValueError("a model passed directly needs its recipe as `model.dense_cfg`")
        if checkpoint:
            meta = _load(cfg_or_model, checkpoint).get("meta", {})
        return cfg_or_model.eval(), cfg, meta
    own = load_dense_checkpoint(checkpoint) if checkpoint else None
    if cfg_or_model is None:
        if own is None:
            raise ValueError("give a recipe (a checkpoint of another toolbox carries none)")
        cfg_or_model = own["config"]
    cfg = copy.deepcopy(_cfg(cfg_or_model))
    cfg["model"]["checkpoint"] = None
    cfg["model"]["backbone"]["pretrained"] = None
    if own is not None and own.get("meta", {}).get("classes") and not cfg["data"]["classes"]:
        cfg["data"]["classes"] = list(own["meta"]["classes"])
    model = build_model(cfg)
    if checkpoint:
        meta = _load(model, checkpoint).get("meta", {})
    model.dense_cfg = cfg
    return model.eval(), cfg, meta


def evaluate(cfg, checkpoint: str | os.PathLike | None, split: str = "val", out_dir: str | os.PathLike | None = None,
             limit: int | None = None) -> dict:
    """COCO box (and mask) AP, AP50, AP75, APs/m/l with pycocotools; written to out_dir/metrics.json."""
    model, cfg, _ = _model_and_cfg(cfg, checkpoint)
    metrics = _evaluate_model(model, cfg, DetDataset(cfg, split, train=False), limit)
    if out_dir is not None:
        write_json(metrics, Path(out_dir) / "metrics.json")
    return metrics


def predict(cfg_or_model, checkpoint, inputs, out_dir: str | os.PathLike, score_thr: float = 0.3) -> list[dict]:
    """Detections for an image, a folder or a list: `<stem>_det.png` (boxes, names, scores, masks over the
    image) and `<stem>.json` (boxes x1 y1 x2 y2, class, score, mask as COCO RLE) per image, plus predictions.json."""
    from pycocotools import mask as mask_utils

    model, cfg, _ = _model_and_cfg(cfg_or_model, checkpoint)
    names = _class_names(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path, image in readable_images(inputs, results):
        out = _detect(model, [np.asarray(image)], cfg)[0]
        keep = out["scores"] >= score_thr
        boxes, labels, scores = out["boxes"][keep].numpy(), out["labels"][keep].tolist(), out["scores"][keep].tolist()
        masks = out["masks"][keep].numpy() if "masks" in out else None
        draw_instances(image, boxes, [lab - 1 for lab in labels], scores, names, masks).save(
            out_dir / f"{path.stem}_det.png")
        dets = []
        for j, (box, lab, sc) in enumerate(zip(boxes, labels, scores)):
            det = {"box": [float(v) for v in box], "label": int(lab - 1), "name": names[lab - 1], "score": float(sc)}
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[j].astype(np.uint8)))
                det["mask_rle"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
            dets.append(det)
        record = {"image": str(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
                  "picture": str(out_dir / f"{path.stem}_det.png"), "score_thr": score_thr, "detections": dets}
        write_json(record, out_dir / f"{path.stem}.json")
        results.append(record)
    write_json(results, out_dir / "predictions.json")
    return results


def complexity(variants: Sequence[str] = ("uniformer_small", "uniformer_base"), input_size: Sequence[int] = (800, 1280),
               stage3: str = "hybrid", window_size: int = 14, num_classes: int = 80,
               model_type: str = "mask_rcnn") -> list[dict]:
    """Parameters and GFLOPs of Mask R-CNN (or `model_type="cascade_mask_rcnn"`) on UniFormer at `input_size`
    (height, width), counting as mmdet's get_flops does: backbone + FPN + RPN head, the box head(s) on 1000
    proposals, the mask head(s) on 100."""
    from uniformer.profiling import count_gflops, count_params

    rows = []
    for variant in variants:
        cfg = load_config({"model": {"type": model_type,
                                     "backbone": {"name": variant, "stage3": stage3, "window_size": window_size}},
                           "data": {"classes": [f"c{i}" for i in range(num_classes)]}})
        model = build_model(cfg).eval()
        backbone = count_params(model.backbone.body)
        name = {"mask_rcnn": "Mask R-CNN", "cascade_mask_rcnn": "Cascade Mask R-CNN"}[model_type]
        rows.append({"model": f"{name} {variant} {stage3[0]}{window_size}", "input": list(input_size),
                     "params": count_params(model), "params_backbone": backbone,
                     "params_fpn": count_params(model.backbone.fpn), "params_rpn": count_params(model.rpn),
                     "params_roi_heads": count_params(model.roi_heads),
                     "gflops": count_gflops(DetectorFlops(model), (3, *input_size))})
    return rows


def demo_config(data_root: str | os.PathLike) -> dict:
    """The demo's recipe: a tiny UniFormer Mask R-CNN (narrow FPN and heads) on 128×128 synthetic shapes."""
    return load_config({
        "description": "demo: tiny UniFormer Mask R-CNN on synthetic shapes",
        "model": {"backbone": {"name": "uniformer_small", "drop_path_rate": 0.0, "window_size": 8,
                               "kwargs": {"depths": [1, 1, 2, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}},
                  "fpn_channels": 64, "box_head_dim": 256, "mask_head_channels": [64, 64],
                  "anchor_sizes": [16, 32, 64, 128, 256], "rpn_batch": 128, "roi_batch": 128,
                  "rpn_train_proposals": [300, 150], "rpn_test_proposals": [300, 150]},
        "data": {"root": str(data_root),
                 "train": {"annotations": "annotations/instances_train.json", "images": "train"},
                 "val": {"annotations": "annotations/instances_val.json", "images": "val"},
                 "train_scales": [128], "test_scale": 128, "max_size": 128},
        "train": {"epochs": None, "iters": 800, "batch_size": 4, "num_workers": 0, "log_every": 50,
                  "checkpoint_every": 400, "threads": 1},
        "optim": {"lr": 1e-3},
        "sched": {"name": "step", "warmup_iters": 100, "warmup_ratio": 0.01, "steps": [600, 750]},
    })


def demo(out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict:
    """Generate (once) coloured shapes in the COCO instances format, train a tiny UniFormer Mask R-CNN,
    evaluate box and mask AP with pycocotools, write out_dir/metrics.json and pictures in out_dir/examples."""
    from ..dense.synthetic import default_cache, write_shapes_coco

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    root = write_shapes_coco(data_dir or default_cache(TASK))
    cfg = load_config(demo_config(root), overrides)
    summary = train(cfg, out_dir)
    metrics = summary["metrics"]
    predict(cfg, out_dir / "final.pt", sorted((root / "val").iterdir())[:4], out_dir / "examples", score_thr=0.5)
    result = {"task": TASK, **{k: metrics[k] for k in metrics if k.startswith(("bbox_", "segm_"))},
              "iters": summary["iters"], "train_time_s": summary["train_time_s"],
              "wall_time_s": time.perf_counter() - t0, "data": str(root), "bar": {"bbox_AP50": 0.5},
              "passed": bool(metrics["bbox_AP50"] >= 0.5)}
    write_json(result, out_dir / "metrics.json")
    return result
