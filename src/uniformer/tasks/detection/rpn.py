"""mmdet's `RPNHead` on torchvision's head module: proposals per level (top `nms_pre` sigmoid scores, NMS 0.7 with
level offsets, the best `max_per_img`) and, in training, the objectness and box losses on sampled anchors."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import box_iou

from .anchors import AnchorGenerator
from .boxes import batched_nms, box_regression_loss, decode_boxes, encode_boxes
from .sampling import max_iou_assign, random_sample

__all__ = ["RegionProposalNetwork"]


class RegionProposalNetwork(nn.Module):
    """mmdet's `RPNHead` (torchvision's `RPNHead` module: 3×3 conv, objectness and delta convs) with its
    proposal selection and losses: assigner 0.7/0.3 (min_pos_iou 0.3, low-quality matches), `batch_size_per_image`
    anchors half positive, L1 (or smooth-L1) box loss."""

    def __init__(self, in_channels: int, anchor_generator: AnchorGenerator, *, pre_nms_top_n: Mapping[str, int],
                 post_nms_top_n: Mapping[str, int], nms_thresh: float = 0.7, fg_iou_thresh: float = 0.7,
                 bg_iou_thresh: float = 0.3, min_pos_iou: float = 0.3, batch_size_per_image: int = 256,
                 positive_fraction: float = 0.5, box_loss: str = "l1", allowed_border: int = -1,
                 size_divisor: int = 32):
        super().__init__()
        if box_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"rpn_box_loss={box_loss!r}: expected 'l1' or 'smooth_l1'")
        self.anchor_generator = anchor_generator
        self.head = RPNHead(in_channels, anchor_generator.num_anchors_per_location())
        self._pre_nms_top_n, self._post_nms_top_n = dict(pre_nms_top_n), dict(post_nms_top_n)
        self.nms_thresh, self.fg_iou_thresh, self.bg_iou_thresh = nms_thresh, fg_iou_thresh, bg_iou_thresh
        self.min_pos_iou, self.batch_size_per_image = min_pos_iou, batch_size_per_image
        self.positive_fraction, self.box_loss = positive_fraction, box_loss
        self.allowed_border, self.size_divisor = allowed_border, size_divisor

    def _proposals(self, scores: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                   image_size: Sequence[int]) -> torch.Tensor:
        """One image: per-level flattened sigmoid scores, deltas and anchors → proposals (x1 y1 x2 y2 score)."""
        mode = "training" if self.training else "testing"
        pre = self._pre_nms_top_n[mode]
        kept = []
        for lvl, (s, d, a) in enumerate(zip(scores, deltas, anchors)):
            s = s.sigmoid()
            if 0 < pre < len(s):
                s, order = s.sort(descending=True)
                s, order = s[:pre], order[:pre]
                d, a = d[order], a[order]
            kept.append((s, d, a, torch.full_like(s, lvl, dtype=torch.int64)))
        s, d, a, levels = (torch.cat(t) for t in zip(*kept))
        boxes = decode_boxes(a, d, max_shape=image_size)
        keep = batched_nms(boxes, s, levels, self.nms_thresh)[:self._post_nms_top_n[mode]]
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
        for i, (t, inside) in enumerate(zip(targets, usable)):
            assigned = torch.full((len(anchors),), -2, dtype=torch.int64, device=anchors.device)
            assigned[inside] = max_iou_assign(box_iou(t["boxes"], anchors[inside]), self.fg_iou_thresh,
                                              self.bg_iou_thresh, self.min_pos_iou, low_quality=True)
            pos, neg = random_sample(assigned, self.batch_size_per_image, self.positive_fraction)
            sampled.append(scores[i, torch.cat([pos, neg])])
            labels.append(torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).float())
            pos_pred.append(deltas[i, pos])
            pos_target.append(encode_boxes(anchors[pos], t["boxes"][assigned[pos]]))
        count = max(1, sum(len(lab) for lab in labels))
        loss_obj = F.binary_cross_entropy_with_logits(torch.cat(sampled), torch.cat(labels), reduction="sum") / count
        loss_box = box_regression_loss(torch.cat(pos_pred), torch.cat(pos_target), self.box_loss) / count
        return {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}
