"""Box arithmetic of mmdetection 2.11, shared by the RPN, the RoI heads and the test pipeline: the delta coder
(`DeltaXYWHBBoxCoder`, centre (x1 + x2) / 2, ratio clip 1000/16), mmcv's group-offset NMS, `multiclass_nms`,
`bbox2roi`, the box regression losses and the grid-sample mask pasting."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import nms

__all__ = ["decode_boxes", "encode_boxes", "batched_nms", "multiclass_nms", "paste_masks", "boxes_to_rois",
           "box_regression_loss"]

_RATIO_CLIP = abs(math.log(16 / 1000))


def decode_boxes(boxes: torch.Tensor, deltas: torch.Tensor, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 max_shape: Sequence[int] | None = None) -> torch.Tensor:
    """mmdet `DeltaXYWHBBoxCoder.decode` (means 0): N×4k `deltas` applied to N×4 `boxes`; clipped to
    `max_shape` (height, width) when given."""
    n = deltas.shape[1] // 4
    d = deltas.reshape(len(deltas), n, 4) * deltas.new_tensor(stds)
    dw, dh = d[..., 2:].clamp(-_RATIO_CLIP, _RATIO_CLIP).unbind(-1)
    px = ((boxes[:, 0] + boxes[:, 2]) * 0.5)[:, None]
    py = ((boxes[:, 1] + boxes[:, 3]) * 0.5)[:, None]
    pw = (boxes[:, 2] - boxes[:, 0])[:, None]
    ph = (boxes[:, 3] - boxes[:, 1])[:, None]
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * d[..., 0], py + ph * d[..., 1]
    x1, y1, x2, y2 = gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5
    if max_shape is not None:
        h, w = max_shape
        x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
        y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
    return torch.stack([x1, y1, x2, y2], -1).reshape(len(deltas), -1)


def encode_boxes(proposals: torch.Tensor, targets: torch.Tensor,
                 stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """mmdet `bbox2delta` (means 0): the N×4 deltas that take `proposals` to `targets`."""
    px, py = (proposals[:, 0] + proposals[:, 2]) * 0.5, (proposals[:, 1] + proposals[:, 3]) * 0.5
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    gx, gy = (targets[:, 0] + targets[:, 2]) * 0.5, (targets[:, 1] + targets[:, 3]) * 0.5
    gw, gh = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    d = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], 1)
    return d / d.new_tensor(stds)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float,
                split_threshold: int = 10000) -> torch.Tensor:
    """mmcv's `batched_nms`: NMS within each group, by offsetting each group's boxes by
    group × (largest coordinate + 1) below `split_threshold` boxes, group by group above.
    Returns the kept indices by decreasing score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if len(boxes) < split_threshold:
        offsets = groups.to(boxes) * (boxes.max() + 1)
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    keep = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for g in torch.unique(groups):
        inds = torch.nonzero(groups == g).squeeze(1)
        keep[inds[nms(boxes[inds], scores[inds], iou_threshold)]] = True
    inds = torch.nonzero(keep).squeeze(1)
    return inds[scores[inds].argsort(descending=True)]


def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, score_thresh: float, iou_threshold: float,
                   max_num: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdet's `multiclass_nms`: `boxes` N×K×4 (per class), `scores` N×K (no background) → the boxes,
    scores and labels (0..K-1) above `score_thresh` surviving per-class NMS, best `max_num` first."""
    k = scores.shape[1]
    labels = torch.arange(k, device=scores.device).view(1, -1).expand_as(scores).reshape(-1)
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
    inds = torch.nonzero(scores > score_thresh).squeeze(1)
    boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
    keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_num]
    return boxes[keep], scores[keep], labels[keep]


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                threshold: float = 0.5) -> torch.Tensor:
    """mmdet's `_do_paste_mask`: N×M×M mask probabilities sampled with `grid_sample` at the pixel centres of
    each float box (N×4, image pixels) on a `height`×`width` image, then `>= threshold` (bool N×H×W).
    Each mask is sampled only over its box (plus a pixel), as mmdet does on the CPU."""
    out = torch.zeros(len(masks), height, width, dtype=torch.bool, device=masks.device)
    for i, (bx0, by0, bx1, by1) in enumerate(boxes):
        x0, y0 = max(int(bx0.floor()) - 1, 0), max(int(by0.floor()) - 1, 0)
        x1, y1 = min(int(bx1.ceil()) + 1, width), min(int(by1.ceil()) + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        ys = (torch.arange(y0, y1, device=masks.device, dtype=torch.float32) + 0.5 - by0) / (by1 - by0) * 2 - 1
        xs = (torch.arange(x0, x1, device=masks.device, dtype=torch.float32) + 0.5 - bx0) / (bx1 - bx0) * 2 - 1
        ys, xs = torch.nan_to_num(ys, posinf=0.0, neginf=0.0), torch.nan_to_num(xs, posinf=0.0, neginf=0.0)
        grid = torch.stack([xs[None, :].expand(len(ys), len(xs)), ys[:, None].expand(len(ys), len(xs))], 2)
        pasted = F.grid_sample(masks[i:i + 1, None].float(), grid[None], align_corners=False)[0, 0]
        out[i, y0:y1, x0:x1] = pasted >= threshold
    return out


def boxes_to_rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """mmdet's `bbox2roi`: per-image N×4 boxes → K×5 (image index first)."""
    return torch.cat([torch.cat([b.new_full((len(b), 1), i), b[:, :4]], 1) for i, b in enumerate(boxes)])


def box_regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Summed L1 (the original configs) or torchvision's smooth L1 (β 1/9) between delta tensors (the heads check
    `kind`)."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0 / 9, reduction="sum")
    return (pred - target).abs().sum()

