"""Top-down human pose estimation with UniFormer backbones (COCO keypoints recipes of the paper).

Entry points (plain Python; `cfg` is a recipe path, a mapping in recipe layout, or a resolved recipe):

    default_config() -> dict
    load_config(source=None, overrides=()) -> dict
    build_model(cfg) -> TopDownPose                        # backbone (stage 3 global) + deconvolution head
    build_datasets(cfg, splits=("train", "val")) -> dict[str, PoseDataset]
    train(cfg, out_dir, resume=None) -> dict               # resume: None, "auto" or a last.pt path
    # OKS AP, AP50, AP75, APm, APl, AR, ... (pycocotools)
    evaluate(cfg, checkpoint, split="val", out_dir=None, limit=None) -> dict
    predict(cfg_or_model, checkpoint, inputs, out_dir, boxes=None) -> list[dict]  # <stem>_pose.png + <stem>.json
    complexity(variants=..., input_sizes=((256, 192), ...)) -> list[dict]        # parameters and GFLOPs
    # synthetic stick figures: train, evaluate, metrics.json
    demo(out_dir, data_dir=None, overrides=()) -> dict

Recipe schema (defaults in `default_config()`; every key must exist there):

    model:  backbone {name, stage3, window_size, drop_path_rate, pretrained, kwargs}, num_deconv, deconv_channels,
            final_kernel, checkpoint (ours or an original mmpose file), skip_mismatched
    data:   root, train/val {annotations, images, detections (person detection results JSON, val only)},
            num_joints, flip_pairs (null: COCO's), skeleton (null: COCO's), sigmas (null: COCO's), upper_body_ids,
            input_size [width, height], heatmap_size (null: input / 4), sigma, bbox_padding, det_bbox_thr,
            flip_prob, half_body_prob, half_body_min_joints, scale_factor, rot_factor, rot_prob, mean, std
    train / optim / sched: as segmentation (epochs or iters; step schedule by default)
    test:   flip, shift_heatmap, post_process default|unbiased (DARK), modulate_kernel, vis_thr, oks_thr,
            use_gt_bbox, batch_size
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..dense.coco import coco_ground_truth
from ..dense.config import load_config as _load_config
from ..dense.engine import train_loop, write_json
from ..dense.io import readable_images
from ..dense.synthetic import COCO_FLIP_PAIRS, COCO_SKELETON
from ..dense.visualize import draw_keypoints
from ..dense.weights import load_task_weights, model_and_recipe
from .data import PoseDataset, pose_collate
from .decoding import COCO_SIGMAS, decode_heatmaps, estimate_poses, rescore_and_nms, topdown_heatmaps
from .head import HeatmapHead, TopDownPose, joints_mse_loss

__all__ = ["default_config", "load_config", "build_model", "build_datasets", "train", "evaluate", "predict",
           "complexity", "demo"]

TASK = "pose"
_logger = logging.getLogger("uniformer.tasks.pose")
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

def default_config() -> dict:
    """A fresh copy of every default of this task's recipes (the schema: a key not here is an error)."""
    return {
        "task": TASK,
        "description": "",
        "model": {
            "backbone": {"name": "uniformer_small", "stage3": "global", "window_size": 14, "drop_path_rate": 0.2,
                         "pretrained": None, "kwargs": {}},
            "num_deconv": 3, "deconv_channels": 256, "final_kernel": 1, "checkpoint": None, "skip_mismatched": False,
        },
        "data": {
            "root": "data/coco",
            "train": {"annotations": "annotations/person_keypoints_train2017.json", "images": "train2017",
                      "detections": None},
            "val": {"annotations": "annotations/person_keypoints_val2017.json", "images": "val2017",
                    "detections": "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"},
            "num_joints": 17, "flip_pairs": None, "skeleton": None, "sigmas": None,
            "upper_body_ids": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            "input_size": [192, 256], "heatmap_size": None, "sigma": 2.0, "bbox_padding": 1.25, "det_bbox_thr": 0.0,
            "flip_prob": 0.5, "half_body_prob": 0.3, "half_body_min_joints": 8, "scale_factor": 0.5, "rot_factor": 40,
            "rot_prob": 0.6, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        },
        "train": {"epochs": 210, "iters": None, "batch_size": 128, "num_workers": 4, "log_every": 50,
                  "eval_every": None, "checkpoint_every": 5, "seed": 0, "threads": None, "clip_grad": None,
                  "max_iters": None},
        "optim": {"lr": 2e-3, "weight_decay": 0.01, "betas": [0.9, 0.999], "no_decay_keys": [], "no_decay_1d": False},
        "sched": {"name": "step", "warmup_iters": 500, "warmup_ratio": 0.001, "steps": [170, 200], "gamma": 0.1,
                  "power": 1.0, "min_lr": 0.0},
        "test": {"flip": True, "shift_heatmap": True, "post_process": "default", "modulate_kernel": 11, "vis_thr": 0.2,
                 "oks_thr": 0.9, "use_gt_bbox": False, "batch_size": 32},
    }


def load_config(source: str | os.PathLike | Mapping | None = None, overrides: Sequence[str] = ()) -> dict:
    """Resolve a pose recipe (see the module docstring for its keys)."""
    return _load_config(source, overrides, defaults=default_config(), task=TASK)


def _cfg(cfg) -> dict:
    return load_config(cfg)


def _flip_pairs(cfg) -> list[tuple[int, int]]:
    return [tuple(p) for p in (cfg["data"]["flip_pairs"] or COCO_FLIP_PAIRS)]


def _sigmas(cfg) -> np.ndarray:
    s = cfg["data"]["sigmas"]
    sigmas = np.asarray(s if s is not None else COCO_SIGMAS, float)
    if len(sigmas) != int(cfg["data"]["num_joints"]):
        raise ValueError(f"data.sigmas has {len(sigmas)} values for {cfg['data']['num_joints']} joints")
    return sigmas


def build_model(cfg) -> TopDownPose:
    """The pose network a recipe describes; `model.checkpoint` (ours or an original mmpose file) is loaded."""
    import uniformer

    cfg = _cfg(cfg)
    m, b = cfg["model"], cfg["model"]["backbone"]
    w, h = cfg["data"]["input_size"]
    if w % 32 or h % 32:
        raise ValueError(f"data.input_size {w}x{h}: width and height must be multiples of 32 (the heatmaps are "
                         "the backbone's stride-32 map upsampled 8x)")
    backbone = uniformer.create_model(
        b["name"], features_only=True, out_indices=(3,), stage3=b["stage3"], window_size=int(b["window_size"]),
        drop_path_rate=float(b["drop_path_rate"]), checkpoint_path=b["pretrained"], **(b["kwargs"] or {}))
    head = HeatmapHead(backbone.feature_info.channels()[-1], int(cfg["data"]["num_joints"]), int(m["num_deconv"]),
                       int(m["deconv_channels"]), int(m["final_kernel"]))
    model = TopDownPose(backbone, head)
    if m["checkpoint"]:
        load_task_weights(model, m["checkpoint"], task=TASK, skip_mismatched=bool(m["skip_mismatched"]))
    return model


def build_datasets(cfg, splits: Sequence[str] = ("train", "val")) -> dict[str, PoseDataset]:
    cfg = _cfg(cfg)
    return {s: PoseDataset(cfg, s) for s in splits}


def _loss(model: TopDownPose, batch: dict) -> dict:
    device = next(model.parameters()).device
    heat = model(batch["img"].to(device))
    target = batch["target"].to(device)
    if heat.shape != target.shape:
        raise ValueError(f"heatmaps {tuple(heat.shape)} vs targets {tuple(target.shape)}: data.heatmap_size must be "
                         "a quarter of data.input_size")
    return {"loss_kpt": joints_mse_loss(heat, target, batch["target_weight"].to(device))}


def _predict_people(model: nn.Module, dataset: PoseDataset, cfg: dict, limit: int | None = None):
    indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    subset = torch.utils.data.Subset(dataset, indices)
    loader = DataLoader(subset, batch_size=int(cfg["test"]["batch_size"]), collate_fn=pose_collate,
                        num_workers=0, shuffle=False)
    people, seen = [], set()
    for batch in loader:
        if batch is None:
            continue
        t = cfg["test"]
        heat = topdown_heatmaps(model, batch["img"], _flip_pairs(cfg), bool(t["flip"]), bool(t["shift_heatmap"]))
        centers, scales = np.stack(batch["center"]), np.stack(batch["scale"])
        coords, maxvals = decode_heatmaps(heat, centers, scales, t["post_process"], int(t["modulate_kernel"]))
        for j in range(len(coords)):
            people.append({"image_id": batch["image_id"][j], "keypoints": np.concatenate(
                [coords[j], maxvals[j][:, None]], 1), "box_score": batch["score"][j], "area": batch["area"][j]})
            seen.add(batch["index"][j])
    skipped = sorted({dataset.samples[i]["image_id"] for i in indices if i not in seen})
    return people, skipped


def _rescore_and_nms(people: list[dict], cfg: dict) -> list[dict]:
    """Per image: person score = box score × mean confidence of its joints above vis_thr, then OKS-NMS."""
    by_image: dict = {}
    for p in people:
        by_image.setdefault(p["image_id"], []).append(p)
    t = cfg["test"]
    return [kept for plist in by_image.values()
            for kept in rescore_and_nms(plist, float(t["vis_thr"]), float(t["oks_thr"]), _sigmas(cfg))]


def _coco_keypoint_eval(dataset: PoseDataset, results: list[dict], image_ids: Sequence, sigmas: np.ndarray) -> dict:
    """OKS AP / AR with pycocotools' COCOeval ('keypoints') over the usable images that were predicted."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    gt = coco_ground_truth(dataset.index, keypoints=True)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([{"image_id": r["image_id"], "category_id": 1, "score": float(r["score"]),
                          "keypoints": [float(v) for v in r["keypoints"].reshape(-1)]} for r in results])
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.imgIds = sorted(image_ids)
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def _evaluate_model(model: nn.Module, cfg: dict, dataset: PoseDataset, limit: int | None = None) -> dict:
    t0 = time.perf_counter()
    people, skipped = _predict_people(model, dataset, cfg, limit)
    results = _rescore_and_nms(people, cfg)
    image_ids = {dataset.samples[i]["image_id"] for i in range(len(dataset) if limit is None else
                                                               min(limit, len(dataset)))} - set(skipped)
    stats = _coco_keypoint_eval(dataset, results, image_ids, _sigmas(cfg))
    return {**stats, "num_images": len(image_ids), "num_people": len(results), "skipped_images": skipped,
            "eval_time_s": time.perf_counter() - t0}


def train(cfg, out_dir: str | os.PathLike, resume: str | os.PathLike | None = None) -> dict:
    """Train on `data.train`, evaluate OKS AP on `data.val` at the end; writes last.pt, final.pt, log.jsonl and
    metrics.json to `out_dir`. Returns the loop's summary (history, metrics, skipped)."""
    cfg = _cfg(cfg)
    model = build_model(cfg)
    train_set = PoseDataset(cfg, "train")
    val = PoseDataset(cfg, "val", train=False) if (cfg["data"].get("val") or {}).get("annotations") else None
    return train_loop(model, train_set, pose_collate, _loss, cfg, out_dir, task=TASK, resume=resume,
                      evaluate_fn=(lambda mdl: _evaluate_model(mdl, cfg, val)) if val is not None else None,
                      meta={"num_joints": train_set.num_joints}, min_batch=2,
                      batch_size_of=lambda b: len(b["index"]))


def _model_and_cfg(cfg_or_model, checkpoint) -> tuple[TopDownPose, dict]:
    return model_and_recipe(cfg_or_model, checkpoint, task=TASK, resolve=_cfg, build=build_model)


def evaluate(cfg, checkpoint: str | os.PathLike | None, split: str = "val", out_dir: str | os.PathLike | None = None,
             limit: int | None = None) -> dict:
    """COCO keypoint AP / AR (pycocotools, OKS) of a checkpoint on a split; written to out_dir/metrics.json."""
    model, cfg = _model_and_cfg(cfg, checkpoint)
    metrics = _evaluate_model(model, cfg, PoseDataset(cfg, split, train=False), limit)
    if out_dir is not None:
        write_json(metrics, Path(out_dir) / "metrics.json")
    return metrics


def predict(cfg_or_model, checkpoint, inputs, out_dir: str | os.PathLike,
            boxes: Mapping[str, Sequence[Sequence[float]]] | None = None) -> list[dict]:
    """Keypoints of the people in an image, a folder or a list of images.

    `boxes` maps an image's file name to its person boxes `[x, y, w, h]` or `[x, y, w, h, score]`
    (from a detector); without an entry the whole image is one person. The people are those the
    evaluation keeps (rescored, OKS-NMS), in the order of their boxes. Writes `<stem>_pose.png` (skeletons) and
    `<stem>.json` per image, plus predictions.json.
    """
    model, cfg = _model_and_cfg(cfg_or_model, checkpoint)
    skeleton = [tuple(p) for p in (cfg["data"]["skeleton"] or COCO_SKELETON)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path, image in readable_images(inputs, results):
        h, w = image.shape[:2]
        person_boxes = (boxes or {}).get(path.name) or [[0, 0, w, h, 1.0]]
        people = sorted(estimate_poses(model, image, person_boxes, cfg["data"], cfg["test"], _flip_pairs(cfg),
                                       _sigmas(cfg)), key=lambda p: p["index"])
        draw_keypoints(image, [p["keypoints"] for p in people], skeleton,
                       float(cfg["test"]["vis_thr"])).save(out_dir / f"{path.stem}_pose.png")
        record = {"image": str(path), "height": h, "width": w, "picture": str(out_dir / f"{path.stem}_pose.png"),
                  "people": [{"box_index": p["index"], "box": p["box"], "score": float(p["score"]),
                              "keypoints": [[float(x), float(y), float(v)] for x, y, v in p["keypoints"]]}
                             for p in people]}
        write_json(record, out_dir / f"{path.stem}.json")
        results.append(record)
    write_json(results, out_dir / "predictions.json")
    return results


def complexity(variants: Sequence[str] = ("uniformer_small", "uniformer_base"),
               input_sizes: Sequence[Sequence[int]] = ((256, 192), (384, 288), (448, 320))) -> list[dict]:
    """Parameters and GFLOPs (multiply-adds, one crop) of the composed pose networks; sizes are (height, width)."""
    from uniformer.profiling import count_gflops, count_params

    rows = []
    for variant in variants:
        for h, w in input_sizes:
            cfg = load_config({"model": {"backbone": {"name": variant}}, "data": {"input_size": [w, h]}})
            model = build_model(cfg).eval()
            rows.append({"model": f"{variant} + heatmap head", "input": [h, w], "params": count_params(model),
                         "gflops": count_gflops(model, (3, h, w))})
    return rows


def demo_config(data_root: str | os.PathLike) -> dict:
    """The demo's recipe: a tiny UniFormer + deconvolution head on 64×96 crops of synthetic stick figures."""
    return load_config({
        "description": "demo: tiny UniFormer top-down pose on synthetic stick figures",
        "model": {"backbone": {"name": "uniformer_small", "drop_path_rate": 0.0,
                               "kwargs": {"depths": [1, 1, 2, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}},
                  "deconv_channels": 64},
        "data": {"root": str(data_root),
                 "train": {"annotations": "annotations/person_keypoints_train.json", "images": "train"},
                 "val": {"annotations": "annotations/person_keypoints_val.json", "images": "val", "detections": None},
                 "input_size": [64, 96], "rot_factor": 20, "scale_factor": 0.25},
        "train": {"epochs": None, "iters": 2000, "batch_size": 16, "num_workers": 0, "log_every": 50,
                  "checkpoint_every": 500, "threads": 1},
        "optim": {"lr": 2e-3, "weight_decay": 0.01},
        "sched": {"name": "step", "warmup_iters": 50, "warmup_ratio": 0.01, "steps": [1500, 1850]},
        "test": {"use_gt_bbox": True},
    })


def demo(out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict:
    """Generate (once) stick figures in the COCO keypoints format, train a tiny UniFormer pose network,
    evaluate OKS AP with pycocotools, write out_dir/metrics.json and example pictures in out_dir/examples."""
    from ..dense.synthetic import default_cache, write_pose_coco

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    root = write_pose_coco(data_dir or default_cache(TASK))
    cfg = load_config(demo_config(root), overrides)
    summary = train(cfg, out_dir)
    metrics = summary["metrics"]
    # Example pictures: the ground-truth person boxes of a few validation images (a top-down model needs boxes).
    val = PoseDataset(cfg, "val", train=False)
    boxes: dict = {}
    for iid, anns in list(val.index.annotations.items())[:4]:
        name = val.index.images[iid]["file_name"]
        boxes[name] = [[a["box"][0], a["box"][1], a["box"][2] - a["box"][0], a["box"][3] - a["box"][1]] for a in anns]
    predict(cfg, out_dir / "final.pt", [root / "val" / n for n in boxes], out_dir / "examples", boxes=boxes)
    result = {"task": TASK, "keypoint_AP": metrics["AP"], **{f"keypoint_{k}": metrics[k] for k in STAT_NAMES[1:]},
              "iters": summary["iters"], "train_time_s": summary["train_time_s"],
              "wall_time_s": time.perf_counter() - t0, "data": str(root), "bar": {"keypoint_AP": 0.5},
              "passed": bool(metrics["AP"] >= 0.5)}
    write_json(result, out_dir / "metrics.json")
    return result
