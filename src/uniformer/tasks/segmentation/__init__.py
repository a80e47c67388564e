"""Semantic segmentation with UniFormer backbones (ADE20K recipes of the paper: Semantic FPN, UperNet).

`Task` is the engine's view of it; `uniformer.tasks.open(checkpoint)` gives it with its trained model for
`Task.predict` (`<stem>_seg.png`, `<stem>_labels.png`, `<stem>.json`). `complexity(variants=..., heads=...,
input_size=(512, 2048))` counts parameters and GFLOPs.

Recipe sections: `Task.schema`. Not told by the keys: model.head is upernet or fpn; model.backbone.pretrained is
a backbone or ImageNet checkpoint, model.checkpoint a full segmentor (ours or an original mmseg one);
data.format is ade20k or folder; data.<split>.split is a text file of the sample ids (file names without
extension, shared by image and label map) to use; data.classes is a list or a text file with one name per line
and sets the class count (data.num_classes null: its length, else 150 for ade20k; given both, they must agree);
data.reduce_zero_label null is true for ade20k (label 0 "other" is ignored and 1..K become 0..K-1, logged at
start-up); test.mode is whole or slide, test.scales are ratios of img_scale, and test.size_divisor resizes each
side on to a multiple of it after the keep-ratio resize (the Semantic FPN AlignResize).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from uniformer.profiling import count_gflops, count_params

from ..dense.synthetic import write_shapes_segmentation
from ..dense.task import DenseTask
from ..dense.visualize import draw_label_map
from .data import SegDataset, read_classes, seg_collate
from .evaluation import SegMetric, infer_probs
from .heads import FCNHead, FPNHead, FPNNeck, Segmentor, UPerHead

__all__ = ["Task", "complexity", "recipe_complexity"]


class Task(DenseTask):
    """Semantic FPN / UperNet on an ADE20K-layout or image-folder + mask-folder dataset."""

    name = "segmentation"
    min_batch = 2  # BatchNorm in the heads
    schema = {
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
            "classes": None, "num_classes": None, "reduce_zero_label": None, "ignore_index": 255,
            "img_suffix": None, "mask_suffix": ".png",
            "img_scale": [2048, 512], "ratio_range": [0.5, 2.0], "crop_size": [512, 512], "cat_max_ratio": 0.75,
            "flip_prob": 0.5, "photometric": True,
            "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
        },
        "train": {"iters": 160000, "batch_size": 2, "num_workers": 4, "log_every": 50},
        "optim": {"lr": 6e-5, "weight_decay": 0.01},
        "sched": {"name": "poly", "warmup_iters": 1500, "warmup_ratio": 1e-6, "power": 1.0, "min_lr": 0.0},
        "checkpoint": {"every": 8000, "best_metric": "val_mIoU"},
        "test": {"mode": "whole", "crop_size": [512, 512], "stride": [341, 341], "scales": [1.0], "flip": False,
                 "size_divisor": None},
    }
    dataset_class = SegDataset
    collate = staticmethod(seg_collate)
    prepare_demo = staticmethod(write_shapes_segmentation)
    demo_bar = {"mIoU": 0.5}
    picture_suffix = "seg"

    @staticmethod
    def validate(cfg: dict, where: str) -> None:
        DenseTask.validate(cfg, where)
        data = cfg["data"]
        if data["num_classes"] is None:  # the class list sets the count; ADE20K's 150 only without one
            if isinstance(data["classes"], list):
                data["num_classes"] = len(data["classes"])
            elif data["classes"] is None and data["format"] == "ade20k":
                data["num_classes"] = 150

    def _has_split(self, split: str) -> bool:
        d = self.cfg["data"]
        return d["format"] != "folder" or bool((d.get(split) or {}).get("images"))

    def batch_size(self, batch) -> int:
        return len(batch["ids"])

    def build_model(self, for_training: bool = True) -> Segmentor:
        m, cfg = self.cfg["model"], self.cfg
        num_classes = len(self.classes)
        backbone = self._backbone(for_training)
        chans = backbone.feature_info.channels()
        if len(chans) != 4:
            raise ValueError("model.backbone: the segmentation heads need all four stage maps (out_indices 0..3)")
        neck = None
        if m["head"] == "upernet":
            head = UPerHead(chans, int(m["channels"]), num_classes, m["pool_scales"], float(m["dropout"]))
        elif m["head"] == "fpn":
            neck = FPNNeck(chans, int(m["neck_channels"]))
            head = FPNHead([int(m["neck_channels"])] * 4, int(m["channels"]), num_classes, dropout=float(m["dropout"]))
        else:
            raise ValueError(f"model.head={m['head']!r}: expected 'upernet' or 'fpn'")
        aux = FCNHead(chans[int(m["aux_in_index"])], int(m["aux_channels"]), num_classes,
                      dropout=float(m["dropout"])) if m["aux_head"] else None
        model = Segmentor(backbone, head, neck, aux, int(m["aux_in_index"]), float(m["aux_weight"]),
                          int(cfg["data"]["ignore_index"]), num_classes)
        return self._initial_weights(model, for_training)

    def training_step(self, model: nn.Module, batch: dict) -> dict:
        return model(batch["img"], batch["seg"])  # loss_seg (+ loss_aux)

    def evaluate(self, model: nn.Module, dataset: SegDataset, batches) -> dict:
        metric = SegMetric(dataset.num_classes, dataset.ignore_index, dataset.classes)
        skipped = []
        for items in batches:
            for i, sample in items:
                if sample is None:
                    skipped.append(dataset.samples[i][0])
                    continue
                probs = infer_probs(model, sample["image"], self.cfg["data"], self.cfg["test"], dataset.num_classes)
                metric.update(probs.argmax(0).cpu(), sample["seg"])
        return {"metric": metric, "skipped": skipped}

    def merge(self, dataset: SegDataset, parts: Sequence[dict]) -> dict:
        total = SegMetric(dataset.num_classes, dataset.ignore_index, dataset.classes)
        for p in parts:
            for name in ("intersect", "union", "pred_area", "label_area"):
                setattr(total, name, getattr(total, name) + getattr(p["metric"], name))
        skipped = [s for p in parts for s in p["skipped"]]
        return {**total.compute(), "num_images": len(dataset) - len(skipped), "skipped": skipped}

    @property
    def classes(self) -> list[str]:
        return self.meta.get("classes") or read_classes(self.cfg["data"], self.cfg)

    def predict_image(self, model: nn.Module, image: np.ndarray, path: Path):
        """The class of every pixel, and the share of the image each class covers."""
        classes = self.classes
        labels = infer_probs(model, image, self.cfg["data"], self.cfg["test"], len(classes)).argmax(0).cpu().numpy()
        ids, counts = np.unique(labels, return_counts=True)
        return {"classes": [{"id": int(i), "name": classes[int(i)], "pixels": int(c),
                             "fraction": float(c / labels.size)} for i, c in zip(ids, counts)]}, labels

    def draw(self, image: np.ndarray, output: np.ndarray):
        return draw_label_map(image, output, len(self.classes))

    def save_extra(self, out_dir: Path, path: Path, output: np.ndarray, record: dict) -> None:
        """`<stem>_labels.png`: the class indices."""
        labels = out_dir / f"{path.stem}_labels.png"
        Image.fromarray(output.astype(np.uint8 if len(self.classes) <= 256 else np.uint16)).save(labels)
        record["labels"] = str(labels)


def complexity(variants: Sequence[str] = ("uniformer_small", "uniformer_base"),
               heads: Sequence[str] = ("fpn", "upernet"), input_size: Sequence[int] = (512, 2048),
               stage3: str = "global", num_classes: int = 150) -> list[dict]:
    """Parameters and GFLOPs (multiply-adds, batch of one) of the composed segmentors at `input_size`."""
    recipes = [{"model": {"backbone": {"name": name, "stage3": stage3}, "head": head, "aux_head": head == "upernet",
                          "channels": 512 if head == "upernet" else 128}, "data": {"num_classes": num_classes}}
               for name in variants for head in heads]
    return [recipe_complexity(Task.load_recipe(recipe), input_size) for recipe in recipes]


def recipe_complexity(cfg: Mapping, input_size: Sequence[int] | None = None) -> dict:
    """Parameters and GFLOPs of the segmentor of a resolved recipe at `input_size` (default: the crop size); a
    class list file not there yet (demo data never generated, data elsewhere) needs `data.num_classes`."""
    m, d = cfg["model"], cfg["data"]
    size = list(input_size) if input_size else list(d["crop_size"])
    try:
        classes = read_classes(d, cfg)
    except FileNotFoundError as e:
        if not d.get("num_classes"):
            raise FileNotFoundError(f"{e}; set data.num_classes to count the model without it") from None
        classes = [f"class_{i}" for i in range(int(d["num_classes"]))]
    model = Task(cfg, {"classes": classes}).build_model(for_training=False).eval()
    aux = count_params(model.auxiliary_head) if hasattr(model, "auxiliary_head") else 0
    return {"model": f"{m['backbone']['name']} + {m['head']}", "stage3": m["backbone"]["stage3"], "input": size,
            "params": count_params(model), "params_inference": count_params(model) - aux,
            "gflops": count_gflops(model, (3, *size))}
