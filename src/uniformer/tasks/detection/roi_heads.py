"""mmdet's `StandardRoIHead` for Mask R-CNN: RoI features from the level `SingleRoIExtractor` picks (aligned
RoIAlign), `Shared2FCBBoxHead` and `FCNMaskHead` as torchvision's modules (background first), the training losses
and the test-time detections (softmax, class-specific boxes, per-class NMS in original coordinates)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from .boxes import box_regression_loss, boxes_to_rois, decode_boxes, encode_boxes, multiclass_nms
from .sampling import RoISampler

__all__ = ["LevelRoIAlign", "mask_targets", "RoIHeadsBase", "MaskRCNNRoIHeads"]


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


def mask_targets(masks: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    """mmdet's mask targets: each ground-truth mask (rois' first column: its index) cut along the RoI with
    aligned RoIAlign to size×size, binarised at 0.5."""
    if len(rois) == 0:
        return masks.new_zeros((0, size, size), dtype=torch.float32)
    return (roi_align(masks[:, None].float(), rois, size, 1.0, 0, True)[:, 0] >= 0.5).float()


class RoIHeadsBase(nn.Module):
    """What the Mask R-CNN and Cascade heads share: aligned RoI pooling (7×7 boxes, 14×14 masks) and the test-time
    per-class NMS with mask probabilities; label L is class output L - `class_offset`."""

    class_offset = 0

    def __init__(self, with_masks: bool, score_thresh: float, nms_thresh: float, detections_per_img: int,
                 mask_size: int):
        super().__init__()
        self.box_roi_pool = LevelRoIAlign(7)
        self.mask_roi_pool = LevelRoIAlign(14) if with_masks else None
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.mask_size = detections_per_img, mask_size

    def has_mask(self) -> bool:
        return self.mask_roi_pool is not None

    def _mask_loss(self, samples: Sequence[dict], targets: Sequence[Mapping], mask_forward) -> torch.Tensor:
        """Binary cross-entropy of the positive RoIs' mask logits (`mask_forward(rois)`) of their class."""
        pos_boxes = [s["boxes"][:s["num_pos"]] for s in samples]
        target = torch.cat([mask_targets(t["masks"], torch.cat([s["gt_index"][:s["num_pos"], None].to(b), b], 1),
                                         self.mask_size) for s, t, b in zip(samples, targets, pos_boxes)])
        classes = torch.cat([s["labels"][:s["num_pos"]] for s in samples]) - self.class_offset
        logits = mask_forward(boxes_to_rois(pos_boxes))[torch.arange(len(classes)), classes]
        return F.binary_cross_entropy_with_logits(logits, target) if len(classes) else logits.sum() * 0

    def _detections(self, boxes: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], features,
                    scale_factors: Sequence[torch.Tensor], mask_probs) -> list[dict]:
        """Per image: `multiclass_nms` of N×K×4 `boxes` (original pixels) and N×K `scores`, labels 1..K, and with
        masks the label's `mask_probs(rois)` on the detections back in network pixels."""
        results = []
        for image_boxes, image_scores in zip(boxes, scores):
            b, s, lab = multiclass_nms(image_boxes, image_scores, self.score_thresh, self.nms_thresh,
                                       self.detections_per_img)
            results.append({"boxes": b, "scores": s, "labels": lab + 1})
        if self.has_mask():
            rois = boxes_to_rois([r["boxes"] * sf for r, sf in zip(results, scale_factors)])
            empty = features[0].new_zeros((0, self.mask_size, self.mask_size))
            probs = mask_probs(rois).split([len(r["boxes"]) for r in results]) if len(rois) else [empty] * len(results)
            for r, p in zip(results, probs):
                r["mask_probs"] = p[torch.arange(len(p)), r["labels"] - self.class_offset] if len(p) else empty
        return results


class MaskRCNNRoIHeads(RoIHeadsBase):
    """mmdet's `StandardRoIHead` with `Shared2FCBBoxHead` and `FCNMaskHead` (torchvision's modules, background
    first) on aligned RoI features."""

    def __init__(self, box_head: nn.Module, box_predictor: nn.Module, mask_head: nn.Module | None,
                 mask_predictor: nn.Module | None, *, box_stds=(0.1, 0.1, 0.2, 0.2), score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, iou_thresh: float = 0.5,
                 low_quality_matches: bool = True, batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 box_loss: str = "l1", mask_size: int = 28):
        super().__init__(mask_head is not None, score_thresh, nms_thresh, detections_per_img, mask_size)
        if box_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"box_loss={box_loss!r}: expected 'l1' (the original config) or 'smooth_l1'")
        self.box_head, self.box_predictor = box_head, box_predictor
        self.mask_head, self.mask_predictor = mask_head, mask_predictor
        self.box_stds, self.box_loss = tuple(box_stds), box_loss
        self.sampling = RoISampler(iou_thresh, low_quality_matches, batch_size_per_image, positive_fraction)

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
        rois = boxes_to_rois([s["boxes"] for s in samples])
        logits, deltas = self.box_forward(features, rois)
        labels = torch.cat([s["labels"] for s in samples])
        pos = torch.nonzero(labels > 0).squeeze(1)
        deltas = deltas.reshape(len(deltas), -1, 4)[pos, labels[pos]]
        target = encode_boxes(rois[pos, 1:], torch.cat([s["gt_boxes"] for s in samples])[pos], self.box_stds)
        losses = {"loss_classifier": F.cross_entropy(logits, labels),
                  "loss_box_reg": box_regression_loss(deltas, target, self.box_loss) / max(1, len(labels))}
        if self.has_mask():
            losses["loss_mask"] = self._mask_loss(samples, targets, lambda r: self.mask_forward(features, r))
        return losses

    @torch.no_grad()
    def predict(self, features: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                image_sizes: Sequence[Sequence[int]], scale_factors: Sequence[torch.Tensor]) -> list[dict]:
        """Detections per image: `boxes` in original pixels (the network's boxes ÷ scale factor), `scores`,
        `labels` (1..K) and, with masks, the label's `mask_probs` (N×28×28)."""
        counts = [len(p) for p in proposals]
        logits, deltas = self.box_forward(features, boxes_to_rois(proposals))
        boxes = [decode_boxes(p[:, :4], d[:, 4:], self.box_stds, size).reshape(len(p), -1, 4) / sf
                 for p, d, size, sf in zip(proposals, deltas.split(counts), image_sizes, scale_factors)]
        scores = [F.softmax(lg, -1)[:, 1:] for lg in logits.split(counts)]
        return self._detections(boxes, scores, features, scale_factors,
                                lambda r: self.mask_forward(features, r).sigmoid())
