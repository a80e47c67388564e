"""Segmentation inference as mmseg 0.13's test path (whole image or sliding window, multi-scale, flip; probabilities
averaged at the original size) and its scores: per-class IoU and accuracy over the whole set, their means over the
classes present (NaN for a class absent from labels and predictions), and all-pixel accuracy.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import normalize, resize_keep_ratio, scaled_size

__all__ = ["infer_probs", "slide_logits", "SegMetric"]


def slide_logits(model: nn.Module, x: torch.Tensor, crop, stride, num_classes: int) -> torch.Tensor:
    """Logits of a 1×3×H×W image from overlapping crops (the last row/column aligned to the border)."""
    _, _, h, w = x.shape
    ch, cw = crop
    sh, sw = stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    out = x.new_zeros(1, num_classes, h, w)
    count = x.new_zeros(1, 1, h, w)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            out[:, :, y1:y2, x1:x2] += model(x[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
    return out / count


@torch.no_grad()
def infer_probs(model: nn.Module, image: np.ndarray, data_cfg: Mapping, test_cfg: Mapping,
                num_classes: int) -> torch.Tensor:
    """Class probabilities (C×H×W) of an RGB uint8 image at its original size; `test_cfg`: `mode` whole|slide
    (`crop_size`, `stride`), `scales` (ratios of `data_cfg["img_scale"]`), `flip`, `size_divisor`."""
    model.eval()
    h, w = image.shape[:2]
    device = next(model.parameters()).device
    total = torch.zeros(num_classes, h, w, device=device)
    views = 0
    for ratio in test_cfg.get("scales") or (1.0,):
        resized = resize_keep_ratio(image, scaled_size(data_cfg["img_scale"], ratio),
                                    size_divisor=test_cfg.get("size_divisor"))
        x = normalize(resized, data_cfg["mean"], data_cfg["std"]).unsqueeze(0).to(device)
        for flip in (False, True) if test_cfg.get("flip") else (False,):
            xi = x.flip(-1) if flip else x
            if test_cfg["mode"] == "slide":
                logits = slide_logits(model, xi, test_cfg["crop_size"], test_cfg["stride"], num_classes)
            elif test_cfg["mode"] == "whole":
                logits = model(xi)
            else:
                raise ValueError(f"test.mode={test_cfg['mode']!r}: expected 'whole' or 'slide'")
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)[0]
            total += probs.flip(-1) if flip else probs
            views += 1
    return total / views


class SegMetric:
    """Accumulates intersection, union, predicted and labelled areas per class over a dataset."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        areas = [np.zeros(num_classes, dtype=np.int64) for _ in range(4)]
        self.intersect, self.union, self.pred_area, self.label_area = areas

    def update(self, pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> None:
        pred = torch.as_tensor(pred).reshape(-1).long()
        label = torch.as_tensor(label).reshape(-1).long()
        if pred.shape != label.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels, the label map {label.numel()}")
        keep = label != self.ignore_index
        pred, label = pred[keep], label[keep]
        n = self.num_classes
        inter = torch.bincount(label[pred == label], minlength=n)[:n].numpy()
        area_p = torch.bincount(pred, minlength=n)[:n].numpy()
        area_l = torch.bincount(label, minlength=n)[:n].numpy()
        self.intersect += inter
        self.pred_area += area_p
        self.label_area += area_l
        self.union += area_p + area_l - inter

    def compute(self) -> dict:
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = self.intersect / self.union
            acc = self.intersect / self.label_area
        all_acc = self.intersect.sum() / max(self.label_area.sum(), 1)

        def nanmean(a):
            return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")

        return {
            "mIoU": nanmean(iou), "mAcc": nanmean(acc), "aAcc": float(all_acc),
            "per_class": {name: {"IoU": float(i), "Acc": float(a)} for name, i, a in zip(self.class_names, iou, acc)},
        }
