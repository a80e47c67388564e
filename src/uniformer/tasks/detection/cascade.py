"""Cascade Mask R-CNN heads as the original `cascade_mask_rcnn_3x_ms_hybrid_*` experiments configure them: three
`ConvFCBBoxHead` stages (GIoU loss × 10, IoU 0.5/0.6/0.7, loss weights 1/0.5/0.25) and one `FCNMaskHead` per stage.
Names and class layout (background last) follow mmdet, so that `convert.convert_mmdet_cascade_keys` only renames.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from .boxes import box_regression_loss, boxes_to_rois, decode_boxes, encode_boxes
from .roi_heads import RoIHeadsBase
from .sampling import RoISampler

__all__ = ["ConvModule", "ConvFCBoxHead", "FCNMaskHead", "CascadeRoIHeads", "STAGE_STDS"]

STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


class ConvModule(nn.Module):
    """mmcv's `ConvModule`: a k×k convolution (no bias when normalised), BatchNorm (synchronised in multi-process
    training, as the original), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ConvFCBoxHead(nn.Module):
    """mmdet's `ConvFCBBoxHead` with shared convs and fcs only: RoI features → class logits (K + 1, background
    last) and box deltas (4 per class, or 4 with `class_agnostic`)."""

    def __init__(self, in_channels: int, num_classes: int, *, roi_size: int = 7, num_convs: int = 4,
                 conv_channels: int = 256, num_fcs: int = 1, fc_dim: int = 1024, norm: bool = True,
                 class_agnostic: bool = False):
        super().__init__()
        self.num_classes, self.class_agnostic = num_classes, class_agnostic
        self.shared_convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_channels, conv_channels, 3, norm) for i in range(num_convs))
        width = (conv_channels if num_convs else in_channels) * roi_size * roi_size
        self.shared_fcs = nn.ModuleList(nn.Linear(width if i == 0 else fc_dim, fc_dim) for i in range(num_fcs))
        self.fc_cls = nn.Linear(fc_dim if num_fcs else width, num_classes + 1)
        self.fc_reg = nn.Linear(fc_dim if num_fcs else width, 4 if class_agnostic else 4 * num_classes)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        for fc, std in ((self.fc_cls, 0.01), (self.fc_reg, 0.001)):
            nn.init.normal_(fc.weight, std=std)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.shared_convs:
            x = conv(x)
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    def class_deltas(self, deltas: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The N×4 deltas of `classes` (0..K-1) from the N×4K (or N×4) predictions."""
        if self.class_agnostic:
            return deltas
        return deltas.reshape(len(deltas), -1, 4)[torch.arange(len(deltas), device=deltas.device), classes]


class FCNMaskHead(nn.Module):
    """mmdet's `FCNMaskHead`: 3×3 convs + ReLU, a 2× transposed convolution + ReLU, 1×1 logits per class."""

    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int] = (256, 256, 256, 256)):
        super().__init__()
        channels = list(channels)
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else channels[i - 1], c, 3) for i, c in enumerate(channels))
        self.upsample = nn.ConvTranspose2d(channels[-1], channels[-1], 2, stride=2)
        self.conv_logits = nn.Conv2d(channels[-1], num_classes, 1)
        for m in (self.upsample, self.conv_logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


class CascadeRoIHeads(RoIHeadsBase):
    """mmdet 2.11's `CascadeRoIHead`: at test time each stage re-regresses the RoIs with its best class, the stages'
    logits and mask probabilities are averaged. Labels are 1..K outside, the background last inside."""

    class_offset = 1

    def __init__(self, box_heads: Sequence[ConvFCBoxHead], mask_heads: Sequence[FCNMaskHead] | None, *,
                 stage_ious: Sequence[float] = (0.5, 0.6, 0.7), stage_stds: Sequence[Sequence[float]] = STAGE_STDS,
                 stage_loss_weights: Sequence[float] = (1.0, 0.5, 0.25), box_loss: str = "giou",
                 giou_weight: float = 10.0, batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 mask_size: int = 28):
        super().__init__(mask_heads is not None, score_thresh, nms_thresh, detections_per_img, mask_size)
        n = len(box_heads)
        if not (len(stage_ious) == len(stage_stds) == len(stage_loss_weights) == n):
            raise ValueError(f"cascade: {n} box heads need as many stage IoUs ({list(stage_ious)}), stds "
                             f"({[list(s) for s in stage_stds]}) and loss weights ({list(stage_loss_weights)})")
        if mask_heads is not None and len(mask_heads) != n:
            raise ValueError(f"cascade: {n} box heads but {len(mask_heads)} mask heads")
        if box_loss not in ("giou", "l1", "smooth_l1"):
            raise ValueError(f"box_loss={box_loss!r}: expected 'giou' (the original config), 'l1' or 'smooth_l1'")
        self.box_heads = nn.ModuleList(box_heads)
        self.mask_heads = nn.ModuleList(mask_heads) if mask_heads is not None else None
        self.stage_stds = [tuple(float(v) for v in s) for s in stage_stds]
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.stage_ious = [float(v) for v in stage_ious]
        self.sampling = [RoISampler(iou, False, batch_size_per_image, positive_fraction) for iou in stage_ious]
        self.box_loss, self.giou_weight = box_loss, giou_weight

    @property
    def num_classes(self) -> int:
        return self.box_heads[0].num_classes

    def box_forward(self, stage: int, features, rois):
        return self.box_heads[stage](self.box_roi_pool(features, rois))

    def mask_forward(self, stage: int, features, rois):
        return self.mask_heads[stage](self.mask_roi_pool(features, rois))

    def dummy_forward(self, features, rois: torch.Tensor, mask_rois: int):
        """mmdet's `forward_dummy`: every stage's box head on `rois`, every mask head on the first `mask_rois`."""
        outs = [self.box_forward(s, features, rois) for s in range(len(self.box_heads))]
        if self.has_mask():
            outs += [self.mask_forward(s, features, rois[:mask_rois]) for s in range(len(self.box_heads))]
        return outs

    def _regress(self, stage: int, rois: torch.Tensor, classes: torch.Tensor, deltas: torch.Tensor,
                 image_sizes: Sequence[Sequence[int]]) -> torch.Tensor:
        """mmdet's `regress_by_class`: the RoIs (K×5) moved by the deltas of `classes`, clipped per image."""
        d = self.box_heads[stage].class_deltas(deltas, classes)
        out = rois.clone()
        for i, size in enumerate(image_sizes):
            inds = torch.nonzero(rois[:, 0] == i).squeeze(1)
            out[inds, 1:] = decode_boxes(rois[inds, 1:], d[inds], self.stage_stds[stage], size)
        return out

    def _stage_loss(self, stage: int, features, samples: list[dict], targets: Sequence[Mapping]) -> tuple[dict, tuple]:
        k = self.num_classes
        rois = boxes_to_rois([s["boxes"] for s in samples])
        logits, deltas = self.box_forward(stage, features, rois)
        labels = torch.cat([s["labels"] for s in samples])
        classes = torch.where(labels > 0, labels - 1, torch.full_like(labels, k))  # background last
        pos = torch.nonzero(labels > 0).squeeze(1)
        gt = torch.cat([s["gt_boxes"] for s in samples])[pos]
        pred = self.box_heads[stage].class_deltas(deltas[pos], classes[pos])
        count = max(1, len(labels))
        if self.box_loss == "giou":
            boxes = decode_boxes(rois[pos, 1:], pred, self.stage_stds[stage])
            box_loss = self.giou_weight * generalized_box_iou_loss(boxes, gt, reduction="sum") / count
        else:
            box_target = encode_boxes(rois[pos, 1:], gt, self.stage_stds[stage])
            box_loss = box_regression_loss(pred, box_target, self.box_loss) / count
        w = self.stage_loss_weights[stage]
        losses = {f"loss_classifier_s{stage}": w * F.cross_entropy(logits, classes),
                  f"loss_box_reg_s{stage}": w * box_loss}
        if self.has_mask():
            losses[f"loss_mask_s{stage}"] = w * self._mask_loss(samples, targets,
                                                                lambda r: self.mask_forward(stage, features, r))
        return losses, (rois, logits, deltas, classes)

    def forward(self, features: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                image_sizes: Sequence[Sequence[int]], targets: Sequence[Mapping]) -> dict:
        """Training losses of every stage (`loss_classifier_s{i}`, `loss_box_reg_s{i}`, `loss_mask_s{i}`: the runner
        sums every `loss*` entry), each weighted by its stage weight; stage i + 1 samples from the boxes stage i
        regressed."""
        losses = {}
        k = self.num_classes
        for stage in range(len(self.box_heads)):
            samples = [self.sampling[stage](p, t) for p, t in zip(proposals, targets)]
            stage_losses, (rois, logits, deltas, classes) = self._stage_loss(stage, features, samples, targets)
            losses.update(stage_losses)
            if stage == len(self.box_heads) - 1:
                break
            with torch.no_grad():  # mmdet's refine_bboxes: regress the sampled RoIs, drop the ground truth ones
                classes = torch.where(classes == k, logits[:, :k].argmax(1), classes)
                moved = self._regress(stage, rois, classes, deltas, image_sizes)
                proposals = []
                for i, s in enumerate(samples):
                    keep = torch.ones(len(s["boxes"]), dtype=torch.bool, device=rois.device)
                    keep[:s["num_pos"]] = ~s["pos_is_gt"]
                    proposals.append(moved[rois[:, 0] == i, 1:][keep])
        return losses

    @torch.no_grad()
    def predict(self, features: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                image_sizes: Sequence[Sequence[int]], scale_factors: Sequence[torch.Tensor]) -> list[dict]:
        """Detections per image as `MaskRCNNRoIHeads.predict`: boxes in original pixels, scores, labels 1..K,
        the label's mask probabilities averaged over the stages' mask heads."""
        k, n_stages = self.num_classes, len(self.box_heads)
        rois = boxes_to_rois(proposals)
        stage_logits = []
        for stage in range(n_stages):
            logits, deltas = self.box_forward(stage, features, rois)
            stage_logits.append(logits)
            if stage < n_stages - 1:
                rois = self._regress(stage, rois, logits[:, :k].argmax(1), deltas, image_sizes)
        scores = F.softmax(sum(stage_logits) / float(n_stages), -1)[:, :k]
        boxes, image_scores = [], []
        for i, (size, sf) in enumerate(zip(image_sizes, scale_factors)):
            inds = torch.nonzero(rois[:, 0] == i).squeeze(1)
            image_boxes = decode_boxes(rois[inds, 1:], deltas[inds], self.stage_stds[-1], size)
            boxes.append(image_boxes.reshape(len(inds), -1, 4).expand(len(inds), k, 4) / sf)
            image_scores.append(scores[inds])

        def mean_probs(r):
            return sum(self.mask_forward(s, features, r).sigmoid() for s in range(n_stages)) / n_stages

        return self._detections(boxes, image_scores, features, scale_factors, mean_probs)
