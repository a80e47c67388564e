"""Training targets as mmdet picks them: `MaxIoUAssigner` and `RandomSampler`, for the RPN's anchors and the
RoI heads' proposals."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torchvision.ops import box_iou

__all__ = ["max_iou_assign", "random_sample", "RoISampler"]


def max_iou_assign(iou: torch.Tensor, pos_thresh: float, neg_thresh: float, min_pos_iou: float,
                   low_quality: bool) -> torch.Tensor:
    """mmdet's `MaxIoUAssigner` on a G×N IoU matrix: per proposal the matched ground truth (>= 0),
    -1 background (IoU < `neg_thresh`) or -2 ignored. With `low_quality`, each ground truth's best proposals
    (all ties, if at least `min_pos_iou`) are assigned to it."""
    assigned = torch.full((iou.shape[1],), -2, dtype=torch.int64, device=iou.device)
    if iou.shape[0] == 0:
        return assigned.fill_(-1)
    best, arg = iou.max(0)
    assigned[(best >= 0) & (best < neg_thresh)] = -1
    pos = best >= pos_thresh
    assigned[pos] = arg[pos]
    if low_quality:
        gt_best = iou.max(1).values
        for g in range(iou.shape[0]):
            if gt_best[g] >= min_pos_iou:
                assigned[iou[g] == gt_best[g]] = g
    return assigned


def random_sample(assigned: torch.Tensor, num: int, pos_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mmdet's `RandomSampler`: up to num × pos_fraction random positives, negatives fill up to `num`."""
    pos = torch.nonzero(assigned >= 0).squeeze(1)
    neg = torch.nonzero(assigned == -1).squeeze(1)
    pos = pos[torch.randperm(len(pos), device=pos.device)[:int(num * pos_fraction)]]
    neg = neg[torch.randperm(len(neg), device=neg.device)[:num - len(pos)]]
    return pos, neg


class RoISampler:
    """Assign and sample RoIs per image as mmdet's `MaxIoUAssigner` + `RandomSampler` (ground truth added
    as proposals first)."""

    def __init__(self, iou_thresh: float, low_quality: bool, batch_size_per_image: int, positive_fraction: float):
        self.iou_thresh, self.low_quality = iou_thresh, low_quality
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction

    def __call__(self, proposals: torch.Tensor, target: Mapping) -> dict:
        gt = target["boxes"]
        boxes = torch.cat([gt, proposals[:, :4]])
        assigned = max_iou_assign(box_iou(gt, boxes), self.iou_thresh, self.iou_thresh, self.iou_thresh,
                                  self.low_quality)
        pos, neg = random_sample(assigned, self.batch_size_per_image, self.positive_fraction)
        inds = torch.cat([pos, neg])
        matched = assigned[inds].clamp(min=0)
        labels = torch.cat([target["labels"][assigned[pos]], torch.zeros_like(neg)])
        return {"boxes": boxes[inds], "labels": labels, "gt_boxes": gt[matched] if len(gt) else boxes[inds],
                "gt_index": matched, "num_pos": len(pos), "pos_is_gt": pos < len(gt)}

