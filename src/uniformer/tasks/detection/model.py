"""Mask R-CNN with a UniFormer backbone, faithful to the original mmdetection 2.11 pipeline.

UniFormer (features_only, stage 3 hybrid with 14×14 windows by default) → torchvision's
FeaturePyramidNetwork with LastLevelMaxPool (five levels, strides 4..64) → an RPN and RoI heads that
reproduce mmdet's test and training computations, built from torchvision's modules and ops:

- anchors on the fixed strides 4, 8, 16, 32, 64 with fractional base anchors (mmdet `AnchorGenerator`,
  scale 8, ratios 0.5/1/2), not torchvision's padded-size ÷ feature-size strides and rounded anchors;
- box deltas decoded and encoded as mmdet's `DeltaXYWHBBoxCoder` (centre (x1 + x2) / 2, ratio clip 1000/16);
- proposals: per level the top `nms_pre` sigmoid scores, NMS 0.7 with level offsets, the best `max_per_img`;
- RoI features: `torchvision.ops.roi_align(..., aligned=True)` (mmcv's kernel, half-pixel offset) on the level
  mmdet's `SingleRoIExtractor` picks (floor(log2(sqrt(area) / 56 + 1e-6)), clamped to 0..3);
- detections: softmax scores, class-specific boxes scaled back to the original image, then NMS 0.5 per class
  (mmdet's `multiclass_nms`) in original coordinates, the best 100;
- masks: the label's 28×28 logits on the detected boxes, pasted with `grid_sample` on the float box corners
  (mmdet's `_do_paste_mask`) and binarised with `>= threshold`.

Training follows the original config: RPN assigner 0.7/0.3 (min_pos_iou 0.3, low-quality matches), 256 anchors
(half positive), L1 box loss; RoI assigner 0.5/0.5 with low-quality matches, 512 RoIs (a quarter positive, ground
truth added as proposals), L1 box loss on deltas normalised by stds 0.1/0.1/0.2/0.2; mask targets cut with
aligned RoIAlign and binarised at 0.5. `box_loss="smooth_l1"` selects torchvision's smooth-L1 instead.

Module names follow torchvision's Mask R-CNN (`backbone.body`, `backbone.fpn`, `rpn.head`,
`roi_heads.box_head/box_predictor/mask_head/mask_predictor`), with torchvision's class layout (background
first); `convert_mmdet_keys` renames an original mmdet checkpoint's neck and heads to them.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, box_iou, nms, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = ["UniFormerFPN", "AnchorGenerator", "RegionProposalNetwork", "LevelRoIAlign", "MaskRCNNRoIHeads",
           "TwoStageDetector", "MODEL_TYPES", "build_detector", "build_mask_rcnn", "mmdet_key_converter",
           "convert_mmdet_keys", "decode_boxes", "encode_boxes",
           "batched_nms", "multiclass_nms", "paste_masks", "detect", "DetectorFlops"]

_RATIO_CLIP = abs(math.log(16 / 1000))


# --- box arithmetic as mmdet does it -----------------------------------------------------------------
def decode_boxes(boxes: torch.Tensor, deltas: torch.Tensor, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 max_shape: Sequence[int] | None = None) -> torch.Tensor:
    """mmdet `DeltaXYWHBBoxCoder.decode` (means 0): N×4k `deltas` applied to N×4 `boxes`; clipped to
    `max_shape` (height, width) when given."""
    n = deltas.shape[1] // 4
    d = deltas.reshape(len(deltas), n, 4) * deltas.new_tensor(stds)
    dw = d[..., 2].clamp(-_RATIO_CLIP, _RATIO_CLIP)
    dh = d[..., 3].clamp(-_RATIO_CLIP, _RATIO_CLIP)
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
    for i in range(len(masks)):
        box = boxes[i:i + 1]
        x0 = int(max(box[0, 0].floor().item() - 1, 0))
        y0 = int(max(box[0, 1].floor().item() - 1, 0))
        x1 = int(min(box[0, 2].ceil().item() + 1, width))
        y1 = int(min(box[0, 3].ceil().item() + 1, height))
        if x1 <= x0 or y1 <= y0:
            continue
        ys = torch.arange(y0, y1, device=masks.device, dtype=torch.float32) + 0.5
        xs = torch.arange(x0, x1, device=masks.device, dtype=torch.float32) + 0.5
        ys = (ys - box[:, 1:2]) / (box[:, 3:4] - box[:, 1:2]) * 2 - 1
        xs = (xs - box[:, 0:1]) / (box[:, 2:3] - box[:, 0:1]) * 2 - 1
        ys, xs = torch.nan_to_num(ys, posinf=0.0, neginf=0.0), torch.nan_to_num(xs, posinf=0.0, neginf=0.0)
        grid = torch.stack([xs[:, None, :].expand(1, len(ys[0]), len(xs[0])),
                            ys[:, :, None].expand(1, len(ys[0]), len(xs[0]))], dim=3)
        pasted = F.grid_sample(masks[i:i + 1, None].float(), grid, align_corners=False)[0, 0]
        out[i, y0:y1, x0:x1] = pasted >= threshold
    return out


def _assign(iou: torch.Tensor, pos_thresh: float, neg_thresh: float, min_pos_iou: float,
            low_quality: bool) -> torch.Tensor:
    """mmdet's `MaxIoUAssigner` on a G×N IoU matrix: per proposal the matched ground truth (>= 0),
    -1 background (IoU < `neg_thresh`) or -2 ignored. With `low_quality`, each ground truth's best proposals
    (all ties, if at least `min_pos_iou`) are assigned to it."""
    n = iou.shape[1]
    assigned = torch.full((n,), -2, dtype=torch.int64, device=iou.device)
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


def _sample(assigned: torch.Tensor, num: int, pos_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mmdet's `RandomSampler`: up to num × pos_fraction random positives, negatives fill up to `num`."""
    pos = torch.nonzero(assigned >= 0).squeeze(1)
    neg = torch.nonzero(assigned == -1).squeeze(1)
    pos = pos[torch.randperm(len(pos), device=pos.device)[:int(num * pos_fraction)]]
    neg = neg[torch.randperm(len(neg), device=neg.device)[:num - len(pos)]]
    return pos, neg


def _box_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l1":
        return (pred - target).abs().sum()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0 / 9, reduction="sum")
    raise ValueError(f"box_loss={kind!r}: expected 'l1' (the original config) or 'smooth_l1'")


# --- modules ------------------------------------------------------------------------------------------
class UniFormerFPN(nn.Module):
    """The four UniFormer maps through an FPN, plus a max-pooled fifth level; `out_channels` for the heads."""

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class AnchorGenerator(nn.Module):
    """mmdet's `AnchorGenerator`: per level, anchors of `sizes[i]` (= scale × stride) and `ratios` (h / w)
    centred on (x·stride, y·stride), with fractional corners; ordered by row, column, ratio."""

    def __init__(self, strides: Sequence[int] = (4, 8, 16, 32, 64), sizes: Sequence[float] = (32, 64, 128, 256, 512),
                 ratios: Sequence[float] = (0.5, 1.0, 2.0)):
        super().__init__()
        if len(strides) != len(sizes):
            raise ValueError(f"anchor sizes {list(sizes)} and strides {list(strides)}: one size per level needed")
        self.strides, self.sizes, self.ratios = tuple(strides), tuple(sizes), tuple(ratios)

    def num_anchors_per_location(self) -> int:
        return len(self.ratios)

    def base_anchors(self, level: int) -> torch.Tensor:
        stride = self.strides[level]
        h_ratios = torch.sqrt(torch.tensor(self.ratios, dtype=torch.float32))
        w_ratios = 1 / h_ratios
        scale = torch.tensor([self.sizes[level] / stride], dtype=torch.float32)
        ws = (stride * w_ratios[:, None] * scale[None, :]).view(-1)
        hs = (stride * h_ratios[:, None] * scale[None, :]).view(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], -1)

    def forward(self, feature_sizes: Sequence[Sequence[int]], device=None) -> list[torch.Tensor]:
        """(H·W·A)×4 anchors per level for feature maps of `feature_sizes` (height, width)."""
        out = []
        for level, (h, w) in enumerate(feature_sizes):
            stride = self.strides[level]
            xs = torch.arange(0, int(w), device=device) * stride
            ys = torch.arange(0, int(h), device=device) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            xx, yy = xx.reshape(-1), yy.reshape(-1)
            shifts = torch.stack([xx, yy, xx, yy], -1).float()
            out.append((self.base_anchors(level).to(device)[None] + shifts[:, None]).view(-1, 4))
        return out


class LevelRoIAlign(nn.Module):
    """mmdet's `SingleRoIExtractor` with mmcv `RoIAlign(aligned=True)`: each RoI (K×5: image index, x1, y1,
    x2, y2) is pooled from level floor(log2(sqrt(w·h) / finest_scale + 1e-6)) clamped to the given levels."""

    def __init__(self, output_size: int, strides: Sequence[int] = (4, 8, 16, 32), finest_scale: int = 56,
                 sampling_ratio: int = 0, aligned: bool = True):
        super().__init__()
        self.output_size, self.strides, self.finest_scale = output_size, tuple(strides), finest_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def levels(self, rois: torch.Tensor) -> torch.Tensor:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        lvl = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return lvl.clamp(0, len(self.strides) - 1).long()

    def forward(self, features: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        out = features[0].new_zeros(len(rois), features[0].shape[1], self.output_size, self.output_size)
        levels = self.levels(rois)
        for i, stride in enumerate(self.strides):
            inds = torch.nonzero(levels == i).squeeze(1)
            if len(inds):
                out[inds] = roi_align(features[i], rois[inds], self.output_size, 1.0 / stride,
                                      self.sampling_ratio, self.aligned)
        return out


def _rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """mmdet's `bbox2roi`: per-image N×4 boxes → K×5 (image index first)."""
    return torch.cat([torch.cat([b.new_full((len(b), 1), i), b[:, :4]], 1) for i, b in enumerate(boxes)])


class RegionProposalNetwork(nn.Module):
    """mmdet's `RPNHead` (torchvision's `RPNHead` module: 3×3 conv, objectness and delta convs) with its
    proposal selection and losses (see the module docstring)."""

    def __init__(self, in_channels: int, anchor_generator: AnchorGenerator, *, pre_nms_top_n: Mapping[str, int],
                 post_nms_top_n: Mapping[str, int], nms_thresh: float = 0.7, fg_iou_thresh: float = 0.7,
                 bg_iou_thresh: float = 0.3, min_pos_iou: float = 0.3, batch_size_per_image: int = 256,
                 positive_fraction: float = 0.5, min_box_size: float = 0.0, box_loss: str = "l1",
                 allowed_border: int = -1, size_divisor: int = 32):
        super().__init__()
        if box_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"rpn_box_loss={box_loss!r}: expected 'l1' or 'smooth_l1'")
        self.anchor_generator = anchor_generator
        self.head = RPNHead(in_channels, anchor_generator.num_anchors_per_location())
        self._pre_nms_top_n, self._post_nms_top_n = dict(pre_nms_top_n), dict(post_nms_top_n)
        self.nms_thresh, self.fg_iou_thresh, self.bg_iou_thresh = nms_thresh, fg_iou_thresh, bg_iou_thresh
        self.min_pos_iou, self.batch_size_per_image = min_pos_iou, batch_size_per_image
        self.positive_fraction, self.min_box_size, self.box_loss = positive_fraction, min_box_size, box_loss
        self.allowed_border, self.size_divisor = allowed_border, size_divisor

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    def _proposals(self, scores: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                   image_size: Sequence[int]) -> torch.Tensor:
        """One image: per-level flattened sigmoid scores, deltas and anchors → proposals (x1 y1 x2 y2 score)."""
        pre = self._pre_nms_top_n[self._mode()]
        keep_scores, keep_deltas, keep_anchors, levels = [], [], [], []
        for lvl, (s, d, a) in enumerate(zip(scores, deltas, anchors)):
            s = s.sigmoid()
            if 0 < pre < len(s):
                s, order = s.sort(descending=True)
                s, order = s[:pre], order[:pre]
                d, a = d[order], a[order]
            keep_scores.append(s)
            keep_deltas.append(d)
            keep_anchors.append(a)
            levels.append(torch.full_like(s, lvl, dtype=torch.int64))
        s, levels = torch.cat(keep_scores), torch.cat(levels)
        boxes = decode_boxes(torch.cat(keep_anchors), torch.cat(keep_deltas), max_shape=image_size)
        if self.min_box_size > 0:
            ok = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_box_size)
            boxes, s, levels = boxes[ok], s[ok], levels[ok]
        keep = batched_nms(boxes, s, levels, self.nms_thresh)[:self._post_nms_top_n[self._mode()]]
        return torch.cat([boxes[keep], s[keep, None]], 1)

    def forward(self, features: Sequence[torch.Tensor], image_sizes: Sequence[Sequence[int]],
                targets: Sequence[Mapping] | None = None) -> tuple[list[torch.Tensor], dict]:
        """Proposals (per image K×5: x1 y1 x2 y2 score, in input pixels) and, in training, the losses."""
        objectness, deltas = self.head(list(features))
        n = len(image_sizes)
        scores = [o.permute(0, 2, 3, 1).reshape(n, -1) for o in objectness]
        deltas = [d.permute(0, 2, 3, 1).reshape(n, -1, 4) for d in deltas]
        anchors = self.anchor_generator([f.shape[-2:] for f in features], device=features[0].device)
        with torch.no_grad():
            proposals = [self._proposals([s[i].detach() for s in scores], [d[i].detach() for d in deltas], anchors,
                                         image_sizes[i]) for i in range(n)]
        if not self.training:
            return proposals, {}
        if targets is None:
            raise ValueError("the RPN needs targets in training mode")
        usable = [self._usable(anchors, [f.shape[-2:] for f in features], size) for size in image_sizes]
        return proposals, self.loss(torch.cat(scores, 1), torch.cat(deltas, 1), torch.cat(anchors), usable, targets)

    def _usable(self, anchors: list[torch.Tensor], feature_sizes, image_size: Sequence[int]) -> torch.Tensor:
        """mmdet's training anchors: centred on the image's padded area (`valid_flags`) and, with
        `allowed_border` >= 0, inside the image up to that many pixels (`anchor_inside_flags`)."""
        a = self.anchor_generator.num_anchors_per_location()
        d = self.size_divisor
        pad_h, pad_w = (math.ceil(image_size[0] / d) * d, math.ceil(image_size[1] / d) * d)
        flags = []
        for level, (fh, fw) in enumerate(feature_sizes):
            stride = self.anchor_generator.strides[level]
            ys = torch.arange(int(fh), device=anchors[0].device) < min(math.ceil(pad_h / stride), int(fh))
            xs = torch.arange(int(fw), device=anchors[0].device) < min(math.ceil(pad_w / stride), int(fw))
            flags.append((ys[:, None, None] & xs[None, :, None]).expand(int(fh), int(fw), a).reshape(-1))
        flags = torch.cat(flags)
        if self.allowed_border >= 0:
            b, (h, w), all_anchors = self.allowed_border, image_size, torch.cat(anchors)
            flags &= ((all_anchors[:, 0] >= -b) & (all_anchors[:, 1] >= -b) & (all_anchors[:, 2] < w + b)
                      & (all_anchors[:, 3] < h + b))
        return torch.nonzero(flags).squeeze(1)

    def loss(self, scores: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, usable: list[torch.Tensor],
             targets: Sequence[Mapping]) -> dict:
        labels, sampled, pos_pred, pos_target = [], [], [], []
        for i, t in enumerate(targets):
            inside = usable[i]
            assigned = torch.full((len(anchors),), -2, dtype=torch.int64, device=anchors.device)
            assigned[inside] = _assign(box_iou(t["boxes"], anchors[inside]), self.fg_iou_thresh, self.bg_iou_thresh,
                                       self.min_pos_iou, low_quality=True)
            pos, neg = _sample(assigned, self.batch_size_per_image, self.positive_fraction)
            sampled.append(scores[i, torch.cat([pos, neg])])
            labels.append(torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).float())
            pos_pred.append(deltas[i, pos])
            pos_target.append(encode_boxes(anchors[pos], t["boxes"][assigned[pos]]))
        count = max(1, sum(len(lab) for lab in labels))
        loss_obj = F.binary_cross_entropy_with_logits(torch.cat(sampled), torch.cat(labels), reduction="sum") / count
        loss_box = _box_loss(torch.cat(pos_pred), torch.cat(pos_target), self.box_loss) / count
        return {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}


def _mask_targets(masks: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    """mmdet's mask targets: each ground-truth mask (rois' first column: its index) cut along the RoI with
    aligned RoIAlign to size×size, binarised at 0.5."""
    if len(rois) == 0:
        return masks.new_zeros((0, size, size), dtype=torch.float32)
    return (roi_align(masks[:, None].float(), rois, size, 1.0, 0, True)[:, 0] >= 0.5).float()


class _RoISampling:
    """Assign and sample RoIs per image as mmdet's `MaxIoUAssigner` + `RandomSampler` (ground truth added
    as proposals first)."""

    def __init__(self, iou_thresh: float, low_quality: bool, batch_size_per_image: int, positive_fraction: float):
        self.iou_thresh, self.low_quality = iou_thresh, low_quality
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction

    def __call__(self, proposals: torch.Tensor, target: Mapping) -> dict:
        gt = target["boxes"]
        boxes = torch.cat([gt, proposals[:, :4]])
        assigned = _assign(box_iou(gt, boxes), self.iou_thresh, self.iou_thresh, self.iou_thresh, self.low_quality)
        pos, neg = _sample(assigned, self.batch_size_per_image, self.positive_fraction)
        inds = torch.cat([pos, neg])
        matched = assigned[inds].clamp(min=0)
        labels = torch.cat([target["labels"][assigned[pos]], torch.zeros_like(neg)])
        return {"boxes": boxes[inds], "labels": labels, "gt_boxes": gt[matched] if len(gt) else boxes[inds],
                "gt_index": matched, "num_pos": len(pos), "pos_is_gt": pos < len(gt)}


class MaskRCNNRoIHeads(nn.Module):
    """mmdet's `StandardRoIHead` with `Shared2FCBBoxHead` and `FCNMaskHead` (torchvision's modules, background
    first) on aligned RoI features."""

    def __init__(self, box_head: nn.Module, box_predictor: nn.Module, mask_head: nn.Module | None,
                 mask_predictor: nn.Module | None, *, box_stds=(0.1, 0.1, 0.2, 0.2), score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, iou_thresh: float = 0.5,
                 low_quality_matches: bool = True, batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 box_loss: str = "l1", mask_size: int = 28):
        super().__init__()
        if box_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"box_loss={box_loss!r}: expected 'l1' (the original config) or 'smooth_l1'")
        self.box_roi_pool = LevelRoIAlign(7)
        self.box_head, self.box_predictor = box_head, box_predictor
        self.mask_roi_pool = LevelRoIAlign(14) if mask_head is not None else None
        self.mask_head, self.mask_predictor = mask_head, mask_predictor
        self.box_stds, self.score_thresh, self.nms_thresh = tuple(box_stds), score_thresh, nms_thresh
        self.detections_per_img, self.box_loss, self.mask_size = detections_per_img, box_loss, mask_size
        self.sampling = _RoISampling(iou_thresh, low_quality_matches, batch_size_per_image, positive_fraction)

    def has_mask(self) -> bool:
        return self.mask_head is not None

    def box_forward(self, features, rois):
        return self.box_predictor(self.box_head(self.box_roi_pool(features, rois)))

    def mask_forward(self, features, rois):
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, rois)))

    def dummy_forward(self, features, rois: torch.Tensor, mask_rois: int):
        """mmdet's `forward_dummy`: the box head on `rois`, the mask head on the first `mask_rois` of them."""
        out = self.box_forward(features, rois)
        return self.mask_forward(features, rois[:mask_rois]) if self.has_mask() else out

    def forward(self, features: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                image_sizes: Sequence[Sequence[int]], targets: Sequence[Mapping]) -> dict:
        """Training losses: `loss_classifier`, `loss_box_reg` and (with masks) `loss_mask`."""
        samples = [self.sampling(p, t) for p, t in zip(proposals, targets)]
        rois = _rois([s["boxes"] for s in samples])
        logits, deltas = self.box_forward(features, rois)
        labels = torch.cat([s["labels"] for s in samples])
        pos = torch.nonzero(labels > 0).squeeze(1)
        deltas = deltas.reshape(len(deltas), -1, 4)[pos, labels[pos]]
        target = encode_boxes(rois[pos, 1:], torch.cat([s["gt_boxes"] for s in samples])[pos], self.box_stds)
        losses = {"loss_classifier": F.cross_entropy(logits, labels),
                  "loss_box_reg": _box_loss(deltas, target, self.box_loss) / max(1, len(labels))}
        if self.has_mask():
            pos_boxes = [s["boxes"][:s["num_pos"]] for s in samples]
            mask_target = torch.cat([
                _mask_targets(t["masks"], torch.cat([s["gt_index"][:s["num_pos"], None].to(b), b], 1), self.mask_size)
                for s, t, b in zip(samples, targets, pos_boxes)])
            pos_labels = torch.cat([s["labels"][:s["num_pos"]] for s in samples])
            logits = self.mask_forward(features, _rois(pos_boxes))[torch.arange(len(pos_labels)), pos_labels]
            losses["loss_mask"] = (F.binary_cross_entropy_with_logits(logits, mask_target) if len(pos_labels)
                                   else logits.sum() * 0)
        return losses

    @torch.no_grad()
    def predict(self, features: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                image_sizes: Sequence[Sequence[int]], scale_factors: Sequence[torch.Tensor]) -> list[dict]:
        """Detections per image: `boxes` in original pixels (the network's boxes ÷ scale factor), `scores`,
        `labels` (1..K) and, with masks, the label's `mask_probs` (N×28×28)."""
        counts = [len(p) for p in proposals]
        logits, deltas = self.box_forward(features, _rois(proposals))
        results = []
        for p, lg, dl, size, sf in zip(proposals, logits.split(counts), deltas.split(counts), image_sizes,
                                       scale_factors):
            scores = F.softmax(lg, -1)[:, 1:]
            boxes = decode_boxes(p[:, :4], dl[:, 4:], self.box_stds, size).reshape(len(p), -1, 4) / sf
            b, s, lab = multiclass_nms(boxes, scores, self.score_thresh, self.nms_thresh, self.detections_per_img)
            results.append({"boxes": b, "scores": s, "labels": lab + 1})
        if self.has_mask():
            mask_boxes = [r["boxes"] * sf for r, sf in zip(results, scale_factors)]
            probs = self.mask_forward(features, _rois(mask_boxes)).sigmoid() if sum(map(len, mask_boxes)) else None
            start = 0
            for r in results:
                n = len(r["boxes"])
                r["mask_probs"] = (probs[start:start + n][torch.arange(n), r["labels"]] if n else
                                   features[0].new_zeros((0, self.mask_size, self.mask_size)))
                start += n
        return results


class TwoStageDetector(nn.Module):
    """Backbone + FPN, RPN and RoI heads on images already resized (float 0..255 RGB, 3×h×w each):
    normalised with mmdet's mean and 1 / std, zero-padded to a multiple of `size_divisor`."""

    def __init__(self, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: nn.Module,
                 mean: Sequence[float], std: Sequence[float], size_divisor: int = 32):
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = backbone, rpn, roi_heads
        self.register_buffer("pixel_mean", torch.tensor([m * 255.0 for m in mean]).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_inv_std", torch.tensor([1.0 / (s * 255.0) for s in std]).view(-1, 1, 1),
                             persistent=False)
        self.size_divisor = size_divisor

    def batch(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        d = self.size_divisor
        h = int(math.ceil(max(s[0] for s in sizes) / d) * d)
        w = int(math.ceil(max(s[1] for s in sizes) / d) * d)
        x = images[0].new_zeros(len(images), 3, h, w)
        for i, im in enumerate(images):
            x[i, :, :im.shape[-2], :im.shape[-1]] = (im - self.pixel_mean) * self.pixel_inv_std
        return x, sizes

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[Mapping] | None = None,
                scale_factors: Sequence[torch.Tensor] | None = None):
        """Training: the loss dict (targets in input pixels: `boxes`, `labels` 1..K, `masks`). Testing: per image
        the RoI heads' detections, boxes divided by `scale_factors` (w, h, w, h; default 1)."""
        x, sizes = self.batch(images)
        feats = list(self.backbone(x).values())
        proposals, losses = self.rpn(feats, sizes, targets)
        if self.training:
            losses.update(self.roi_heads(feats[:4], [p[:, :4] for p in proposals], sizes, targets))
            return losses
        if scale_factors is None:
            scale_factors = [x.new_ones(4)] * len(images)
        return self.roi_heads.predict(feats[:4], [p[:, :4] for p in proposals], sizes, scale_factors)


def build_mask_rcnn(body: nn.Module, num_classes: int, *, with_masks: bool = True, fpn_channels: int = 256,
                    box_head_dim: int = 1024, mask_head_channels: Sequence[int] = (256, 256, 256, 256),
                    anchor_sizes=(32, 64, 128, 256, 512), rpn_batch: int = 256, roi_batch: int = 512,
                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), test_score_thresh: float = 0.05,
                    detections_per_img: int = 100, rpn_train_proposals: Sequence[int] = (2000, 1000),
                    rpn_test_proposals: Sequence[int] = (1000, 1000), box_loss: str = "l1",
                    rpn_box_loss: str = "l1", rpn_allowed_border: int = -1,
                    roi_low_quality_matches: bool = True) -> TwoStageDetector:
    """Mask R-CNN (or Faster R-CNN without masks) on a UniFormer `body`; `num_classes` excludes the background.
    `rpn_*_proposals`: (top boxes per level before NMS, boxes kept after NMS) per image."""
    backbone = UniFormerFPN(body, fpn_channels)
    rpn = _build_rpn(fpn_channels, anchor_sizes, rpn_batch, rpn_train_proposals, rpn_test_proposals, rpn_box_loss,
                     rpn_allowed_border)
    mask_head = mask_predictor = None
    if with_masks:
        mask_head_channels = tuple(mask_head_channels)
        mask_head = MaskRCNNHeads(fpn_channels, mask_head_channels, 1)
        mask_predictor = MaskRCNNPredictor(mask_head_channels[-1], mask_head_channels[-1], num_classes + 1)
    roi_heads = MaskRCNNRoIHeads(
        TwoMLPHead(fpn_channels * 7 * 7, box_head_dim), FastRCNNPredictor(box_head_dim, num_classes + 1),
        mask_head, mask_predictor, score_thresh=test_score_thresh, detections_per_img=detections_per_img,
        batch_size_per_image=roi_batch, box_loss=box_loss, low_quality_matches=roi_low_quality_matches)
    return TwoStageDetector(backbone, rpn, roi_heads, mean, std)


def _build_rpn(fpn_channels: int, anchor_sizes, rpn_batch: int, train_proposals, test_proposals,
               box_loss: str, allowed_border: int = -1) -> RegionProposalNetwork:
    return RegionProposalNetwork(
        fpn_channels, AnchorGenerator(sizes=[float(s) for s in anchor_sizes]),
        pre_nms_top_n={"training": int(train_proposals[0]), "testing": int(test_proposals[0])},
        post_nms_top_n={"training": int(train_proposals[1]), "testing": int(test_proposals[1])},
        batch_size_per_image=rpn_batch, box_loss=box_loss, allowed_border=allowed_border)


MODEL_TYPES = ("mask_rcnn", "cascade_mask_rcnn")
# what the original configs use where a recipe leaves `box_loss`, `rpn_box_loss`, `rpn_allowed_border` null
_ORIGINAL_LOSSES = {"mask_rcnn": {"box_loss": "l1", "rpn_box_loss": "l1", "rpn_allowed_border": -1},
                    "cascade_mask_rcnn": {"box_loss": "giou", "rpn_box_loss": "smooth_l1", "rpn_allowed_border": 0}}


def build_detector(body: nn.Module, num_classes: int, model_cfg: Mapping, *, mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225), score_thresh: float = 0.05,
                   detections_per_img: int = 100) -> TwoStageDetector:
    """The detector of a recipe's `model` section (`type`: mask_rcnn or cascade_mask_rcnn) on `body`; null
    `box_loss`, `rpn_box_loss` and `rpn_allowed_border` take the original config's value for the type."""
    if model_cfg["type"] not in MODEL_TYPES:
        raise ValueError(f"model.type={model_cfg['type']!r}: expected one of {', '.join(MODEL_TYPES)}")
    originals = _ORIGINAL_LOSSES[model_cfg["type"]]
    m = {**model_cfg, **{k: v for k, v in originals.items() if model_cfg.get(k) is None}}
    common = dict(
        with_masks=bool(m["with_masks"]), fpn_channels=int(m["fpn_channels"]), box_head_dim=int(m["box_head_dim"]),
        mask_head_channels=[int(c) for c in m["mask_head_channels"]], anchor_sizes=[int(s) for s in m["anchor_sizes"]],
        rpn_batch=int(m["rpn_batch"]), roi_batch=int(m["roi_batch"]), mean=mean, std=std,
        test_score_thresh=float(score_thresh), detections_per_img=int(detections_per_img),
        rpn_train_proposals=[int(v) for v in m["rpn_train_proposals"]],
        rpn_test_proposals=[int(v) for v in m["rpn_test_proposals"]], box_loss=str(m["box_loss"]))
    if m["type"] == "mask_rcnn":
        return build_mask_rcnn(body, num_classes, **common, rpn_box_loss=str(m["rpn_box_loss"]),
                               rpn_allowed_border=int(m["rpn_allowed_border"]))
    from .cascade import build_cascade_mask_rcnn

    c = m["cascade"]
    return build_cascade_mask_rcnn(
        body, num_classes, **common, rpn_box_loss=str(m["rpn_box_loss"]),
        rpn_allowed_border=int(m["rpn_allowed_border"]), box_head_convs=int(c["box_head_convs"]),
        box_head_fcs=int(c["box_head_fcs"]), box_head_norm=bool(c["box_head_norm"]),
        class_agnostic=bool(c["class_agnostic"]), stage_ious=[float(v) for v in c["stage_ious"]],
        stage_stds=[[float(v) for v in s] for s in c["stage_stds"]],
        stage_loss_weights=[float(v) for v in c["stage_loss_weights"]])


def mmdet_key_converter(model: TwoStageDetector):
    """The function renaming an original mmdet checkpoint's neck and heads for `model`."""
    from .cascade import CascadeRoIHeads, convert_mmdet_cascade_keys

    return convert_mmdet_cascade_keys if isinstance(model.roi_heads, CascadeRoIHeads) else convert_mmdet_keys


@torch.no_grad()
def detect(model: TwoStageDetector, images: Sequence[np.ndarray], *, scale: Sequence[int] = (800, 1333),
           mask_thresh: float = 0.5) -> list[dict]:
    """The original test pipeline for RGB uint8 H×W×3 `images`: keep-ratio resize of the uint8 image to
    `scale` (short, long) with OpenCV bilinear, the network, boxes scaled back to the image, masks pasted.
    Returns per image `boxes` (x1 y1 x2 y2, image pixels), `scores`, `labels` (1..K) and, with masks,
    `masks` (bool N×H×W)."""
    from .data import resize_keep_ratio

    model.eval()
    device = next(model.parameters()).device
    inputs, factors = [], []
    for image in images:
        resized, factor = resize_keep_ratio(image, scale)
        inputs.append(torch.from_numpy(np.ascontiguousarray(resized)).to(device).permute(2, 0, 1).float())
        factors.append(torch.tensor(factor, dtype=torch.float32, device=device))
    outs = model(inputs, scale_factors=factors)
    results = []
    for image, out, sf in zip(images, outs, factors):
        result = {k: out[k].cpu() for k in ("boxes", "scores", "labels")}
        if "mask_probs" in out:
            paste_boxes = out["boxes"] * sf / sf  # mmdet pastes the RoI boxes divided back by the scale factor
            result["masks"] = paste_masks(out["mask_probs"], paste_boxes, image.shape[0], image.shape[1],
                                          mask_thresh).cpu()
        results.append(result)
    return results


_RENAMES = (
    (r"^neck\.lateral_convs\.(\d+)\.conv\.", r"backbone.fpn.inner_blocks.\1.0."),
    (r"^neck\.fpn_convs\.(\d+)\.conv\.", r"backbone.fpn.layer_blocks.\1.0."),
    (r"^rpn_head\.rpn_conv\.", "rpn.head.conv.0.0."),
    (r"^rpn_head\.rpn_cls\.", "rpn.head.cls_logits."),
    (r"^rpn_head\.rpn_reg\.", "rpn.head.bbox_pred."),
    (r"^roi_head\.bbox_head\.shared_fcs\.0\.", "roi_heads.box_head.fc6."),
    (r"^roi_head\.bbox_head\.shared_fcs\.1\.", "roi_heads.box_head.fc7."),
    (r"^roi_head\.bbox_head\.fc_cls\.", "roi_heads.box_predictor.cls_score."),
    (r"^roi_head\.bbox_head\.fc_reg\.", "roi_heads.box_predictor.bbox_pred."),
    (r"^roi_head\.mask_head\.convs\.(\d+)\.conv\.", r"roi_heads.mask_head.\1.0."),
    (r"^roi_head\.mask_head\.upsample\.", "roi_heads.mask_predictor.conv5_mask."),
    (r"^roi_head\.mask_head\.conv_logits\.", "roi_heads.mask_predictor.mask_fcn_logits."),
)
_NECK_RPN_RENAMES = _RENAMES[:5]


def rename_keys(heads: Mapping[str, torch.Tensor], renames) -> dict:
    """Apply the first matching (pattern, replacement) to each key; keys matching none are kept."""
    out = {}
    for key, value in heads.items():
        new = key
        for pattern, repl in renames:
            if re.match(pattern, key):
                new = re.sub(pattern, repl, key)
                break
        out[new] = value
    return out


def convert_mmdet_keys(heads: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> dict:
    """mmdet Mask R-CNN neck / head tensors → this model's names and class layout (unknown keys are kept
    under their own names, so that they are reported as unexpected)."""
    out = rename_keys(heads, _RENAMES)
    for new, value in out.items():
        if new.startswith("roi_heads.box_predictor.cls_score."):
            out[new] = torch.cat([value[-1:], value[:-1]])  # background: last in mmdet, first in torchvision
        elif new.startswith("roi_heads.box_predictor.bbox_pred."):
            out[new] = torch.cat([value.new_zeros((4,) + value.shape[1:]), value])  # no background deltas in mmdet
        elif new.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
            out[new] = torch.cat([value.new_zeros((1,) + value.shape[1:]), value])
    return out


class DetectorFlops(nn.Module):
    """The work of one test image as mmdet's `get_flops` counts it (`forward_dummy`): backbone, FPN, RPN head,
    the box head(s) on 1000 proposals and the mask head(s) on 100 of them."""

    def __init__(self, model: TwoStageDetector, proposals: int = 1000, mask_rois: int = 100):
        super().__init__()
        self.model, self.proposals, self.mask_rois = model, proposals, mask_rois

    def forward(self, x: torch.Tensor):
        m = self.model
        feats = list(m.backbone(x).values())
        m.rpn.head(feats)
        h, w = x.shape[-2:]
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(self.proposals, 2, generator=g) * torch.tensor([w * 0.75, h * 0.75])
        wh = 16 + torch.rand(self.proposals, 2, generator=g) * torch.tensor([w * 0.25, h * 0.25])
        rois = _rois([torch.cat([xy, xy + wh], 1).to(x.device)])
        return m.roi_heads.dummy_forward(feats[:4], rois, self.mask_rois)
