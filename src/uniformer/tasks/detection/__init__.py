"""Object detection and instance segmentation with UniFormer backbones (COCO Mask R-CNN recipes of the paper).

`Task` is the engine's view of it (the model in `detector.py`); `uniformer.tasks.open(checkpoint)` gives it with
its trained model for `Task.predict` (`<stem>_det.png` + `<stem>.json`: boxes, classes, scores, COCO RLE masks).
`complexity(variants=..., input_size=(800, 1280))` counts parameters and GFLOPs as mmdet's get_flops does.

Recipe sections: `Task.schema` (the 1x schedule). Not told by the keys: model.type is mask_rcnn or
cascade_mask_rcnn; rpn_train/test_proposals are [per level before NMS, kept after NMS]; box_loss (l1 |
smooth_l1 | giou for cascade), rpn_box_loss (l1 | smooth_l1) and rpn_allowed_border (-1: every anchor trains)
are, when null, the original config's choice for the type; model.checkpoint is ours or an original mmdet file;
data.train_scales are short sides drawn per image; data.crop_policy detr is the 3x+MS recipe's crop branch;
test.segm_area box sizes mask APs/m/l by box area (as mmdet 2.11), mask by mask area.

Inference is the original mmdet 2.11 test pipeline (`detector.detect`): uint8 image resized with OpenCV as
mmcv's `imrescale`, aligned RoIAlign, fixed-stride fractional anchors, masks pasted with grid_sample.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from uniformer.profiling import count_gflops, count_params

from ..dense.coco import coco_ground_truth, encode_mask, evaluate_instances, instance_results
from ..dense.io import resolve_path
from ..dense.synthetic import write_shapes_coco
from ..dense.task import DenseTask
from ..dense.visualize import draw_instances
from .convert import mmdet_key_converter
from .data import DetDataset, det_collate
from .detector import DetectorFlops, build_detector, detect

__all__ = ["Task", "complexity", "recipe_complexity"]


def _class_names(cfg: Mapping) -> list[str]:
    """Class names: `data.classes`, else the categories of the training (or validation) annotation file."""
    if cfg["data"]["classes"]:
        return [str(c) for c in cfg["data"]["classes"]]
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


def _detect(model: nn.Module, images: list[np.ndarray], cfg: Mapping) -> list[dict]:
    """The original test pipeline on RGB uint8 images at the recipe's test scale (see `detector.detect`)."""
    d = cfg["data"]
    return detect(model, images, scale=(int(d["test_scale"]), int(d["max_size"])),
                  mask_thresh=float(cfg["test"]["mask_thresh"]))


class Task(DenseTask):
    """Mask R-CNN / Faster R-CNN on a COCO-style instances dataset."""

    name = "detection"
    schema = {  # the 1x schedule
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
        "train": {"epochs": 12, "batch_size": 2, "log_every": 50},
        "optim": {"lr": 1e-4, "weight_decay": 0.05, "no_decay_keys": ["norm"]},
        "sched": {"name": "step", "warmup_iters": 500, "warmup_ratio": 0.001, "steps": [8, 11], "gamma": 0.1},
        "checkpoint": {"best_metric": "val_bbox_AP"},
        "test": {"score_thresh": 0.05, "detections_per_img": 100, "mask_thresh": 0.5, "batch_size": 1,
                 "segm_area": "box"},
    }
    dataset_class = DetDataset
    meta_keys = ("classes", "cat_ids")
    collate = staticmethod(det_collate)
    prepare_demo = staticmethod(write_shapes_coco)
    demo_bar = {"bbox_AP50": 0.5}
    demo_options = {"score_thr": 0.5}
    predict_options = ("score_thr",)
    picture_suffix = "det"

    def build_datasets(self, splits: Sequence[str]) -> dict:
        sets = super().build_datasets(splits)
        for ds in sets.values():
            if ds is not None and self.meta and ds.cat_ids != self.meta["cat_ids"]:
                raise ValueError(f"{ds.ann_file} lists other categories than the training set")
        return sets

    def batch_size(self, batch) -> int:
        return len(batch[0])

    def build_model(self, for_training: bool = True) -> nn.Module:
        cfg, num_classes = self.cfg, len(self.classes)  # no classes: fail before building the backbone
        model = build_detector(self._backbone(for_training), num_classes, cfg["model"], mean=cfg["data"]["mean"],
                               std=cfg["data"]["std"], score_thresh=float(cfg["test"]["score_thresh"]),
                               detections_per_img=int(cfg["test"]["detections_per_img"]))
        return self._initial_weights(model, for_training)

    def _weight_options(self, model: nn.Module) -> dict:
        return {"convert": mmdet_key_converter(model), "backbone": model.backbone.body,
                "backbone_prefix": "backbone.body."}

    def training_step(self, model: nn.Module, batch) -> dict:
        return model(*batch)  # (images, targets) -> named losses: loss_objectness, loss_rpn_box_reg, ...

    def evaluate(self, model: nn.Module, dataset: DetDataset, batches) -> dict:
        segm_area = str(self.cfg["test"]["segm_area"])
        boxes, segms, done, skipped = [], [], [], []
        for items in batches:
            batch = [(dataset.image_ids[i], s) for i, s in items]
            skipped += [iid for iid, s in batch if s is None]
            batch = [(iid, s) for iid, s in batch if s is not None]
            if not batch:
                continue
            for (iid, _), out in zip(batch, _detect(model, [s[0] for _, s in batch], self.cfg)):
                b, m = instance_results(out, iid, dataset.cat_ids, segm_area)
                boxes += b
                segms += m
                done.append(iid)
        return {"boxes": boxes, "segms": segms, "done": done, "skipped": skipped}

    def merge(self, dataset: DetDataset, parts: Sequence[dict]) -> dict:
        boxes = [r for p in parts for r in p["boxes"]]
        done = [i for p in parts for i in p["done"]]
        gt = coco_ground_truth(dataset.index)
        metrics = evaluate_instances(gt, boxes, "bbox", done)
        if dataset.with_masks:
            metrics.update(evaluate_instances(gt, [r for p in parts for r in p["segms"]], "segm", done))
            metrics["segm_size_convention"] = (
                "box area (as mmdet 2.11: mask results carry their bbox, so pycocotools sizes them by it)"
                if self.cfg["test"]["segm_area"] == "box" else "mask area")
        metrics.update({"num_images": len(done), "num_detections": len(boxes),
                        "skipped_images": [i for p in parts for i in p["skipped"]]})
        return metrics

    @property
    def classes(self) -> list[str]:
        return self.meta.get("classes") or _class_names(self.cfg)

    def predict_image(self, model: nn.Module, image: np.ndarray, path: Path, score_thr: float | None = None):
        """Boxes x1 y1 x2 y2, class, score and mask (COCO RLE) of the detections scoring `score_thr` (0.3)."""
        score_thr = 0.3 if score_thr is None else float(score_thr)
        names = self.classes
        out = _detect(model, [np.asarray(image)], self.cfg)[0]
        keep = out["scores"] >= score_thr
        boxes, labels, scores = out["boxes"][keep].numpy(), out["labels"][keep].tolist(), out["scores"][keep].tolist()
        masks = out["masks"][keep].numpy() if "masks" in out else None
        dets = []
        for j, (box, lab, sc) in enumerate(zip(boxes, labels, scores)):
            det = {"box": [float(v) for v in box], "label": int(lab - 1), "name": names[lab - 1], "score": float(sc)}
            if masks is not None:
                det["mask_rle"] = encode_mask(masks[j])
            dets.append(det)
        return {"score_thr": score_thr, "detections": dets}, (boxes, labels, scores, masks)

    def draw(self, image: np.ndarray, output):
        boxes, labels, scores, masks = output
        return draw_instances(image, boxes, [lab - 1 for lab in labels], scores, self.classes, masks)


def complexity(variants: Sequence[str] = ("uniformer_small", "uniformer_base"), input_size: Sequence[int] = (800, 1280),
               stage3: str = "hybrid", window_size: int = 14, num_classes: int = 80,
               model_type: str = "mask_rcnn") -> list[dict]:
    """Parameters and GFLOPs of Mask R-CNN (or `model_type="cascade_mask_rcnn"`) on UniFormer at `input_size`
    (height, width), counting as mmdet's get_flops does: backbone + FPN + RPN head, the box head(s) on 1000
    proposals, the mask head(s) on 100."""
    classes = [f"c{i}" for i in range(num_classes)]
    recipes = [{"model": {"type": model_type, "backbone": {"name": name, "stage3": stage3, "window_size": window_size}},
                "data": {"classes": classes}} for name in variants]
    return [recipe_complexity(Task.load_recipe(recipe), input_size) for recipe in recipes]


def recipe_complexity(cfg: Mapping, input_size: Sequence[int] | None = None) -> dict:
    """Parameters and GFLOPs of the detector of a resolved recipe, at `input_size` (default: the test scale
    on a square image); COCO's 80 classes when the recipe's classes are not known here (no annotation file)."""
    b = cfg["model"]["backbone"]
    size = list(input_size) if input_size else [int(cfg["data"]["test_scale"])] * 2
    try:
        classes = _class_names(cfg)
    except ValueError:
        classes = [f"class_{i}" for i in range(80)]
    model = Task(cfg, {"classes": classes}).build_model(for_training=False).eval()
    name = {"mask_rcnn": "Mask R-CNN", "cascade_mask_rcnn": "Cascade Mask R-CNN"}[cfg["model"]["type"]]
    return {"model": f"{name} {b['name']} {b['stage3'][0]}{b['window_size']}", "input": size,
            "params": count_params(model), "params_backbone": count_params(model.backbone.body),
            "params_fpn": count_params(model.backbone.fpn), "params_rpn": count_params(model.rpn),
            "params_roi_heads": count_params(model.roi_heads), "gflops": count_gflops(DetectorFlops(model), (3, *size))}
