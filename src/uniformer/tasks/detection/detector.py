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


Where each part lives (split by role as torchvision's detection package): `boxes.py` (coder, NMS, RoIs, losses,
mask pasting), `anchors.py`, `sampling.py` (assigner, sampler), `rpn.py`, `roi_heads.py` (Mask R-CNN heads),
`cascade.py` (Cascade heads), this module (the detector, its builders, the test pipeline and the FLOP counter),
`convert.py` (original checkpoint keys).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .boxes import boxes_to_rois, paste_masks
from .cascade import STAGE_STDS, CascadeRoIHeads, ConvFCBoxHead, FCNMaskHead
from .data import resize_keep_ratio
from .roi_heads import MaskRCNNRoIHeads
from .rpn import RegionProposalNetwork, build_rpn

__all__ = ["UniFormerFPN", "TwoStageDetector", "MODEL_TYPES", "build_detector", "build_mask_rcnn",
           "build_cascade_mask_rcnn", "detect", "DetectorFlops"]


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
    rpn = build_rpn(fpn_channels, anchor_sizes, rpn_batch, rpn_train_proposals, rpn_test_proposals, rpn_box_loss,
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


def build_cascade_mask_rcnn(body: nn.Module, num_classes: int, *, with_masks: bool = True, fpn_channels: int = 256,
                            box_head_convs: int = 4, box_head_fcs: int = 1, box_head_dim: int = 1024,
                            box_head_norm: bool = True, class_agnostic: bool = False,
                            mask_head_channels: Sequence[int] = (256, 256, 256, 256),
                            anchor_sizes=(32, 64, 128, 256, 512), rpn_batch: int = 256, roi_batch: int = 512,
                            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), test_score_thresh: float = 0.05,
                            detections_per_img: int = 100, rpn_train_proposals: Sequence[int] = (2000, 2000),
                            rpn_test_proposals: Sequence[int] = (1000, 1000), rpn_box_loss: str = "smooth_l1",
                            rpn_allowed_border: int = 0, box_loss: str = "giou",
                            stage_ious: Sequence[float] = (0.5, 0.6, 0.7),
                            stage_stds: Sequence[Sequence[float]] = STAGE_STDS,
                            stage_loss_weights: Sequence[float] = (1.0, 0.5, 0.25)) -> TwoStageDetector:
    """Cascade Mask R-CNN (Cascade R-CNN without masks) on a UniFormer `body` with the original experiment's
    defaults; `num_classes` excludes the background."""
    backbone = UniFormerFPN(body, fpn_channels)
    rpn = build_rpn(fpn_channels, anchor_sizes, rpn_batch, rpn_train_proposals, rpn_test_proposals, rpn_box_loss,
                    rpn_allowed_border)
    box_heads = [ConvFCBoxHead(fpn_channels, num_classes, num_convs=box_head_convs, conv_channels=fpn_channels,
                               num_fcs=box_head_fcs, fc_dim=box_head_dim, norm=box_head_norm,
                               class_agnostic=class_agnostic) for _ in stage_ious]
    mask_heads = None
    if with_masks:
        mask_heads = [FCNMaskHead(fpn_channels, num_classes, mask_head_channels) for _ in stage_ious]
    roi_heads = CascadeRoIHeads(box_heads, mask_heads, stage_ious=stage_ious, stage_stds=stage_stds,
                                stage_loss_weights=stage_loss_weights, box_loss=box_loss,
                                batch_size_per_image=roi_batch, score_thresh=test_score_thresh,
                                detections_per_img=detections_per_img)
    return TwoStageDetector(backbone, rpn, roi_heads, mean, std)


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
    c = m["cascade"]
    return build_cascade_mask_rcnn(
        body, num_classes, **common, rpn_box_loss=str(m["rpn_box_loss"]),
        rpn_allowed_border=int(m["rpn_allowed_border"]), box_head_convs=int(c["box_head_convs"]),
        box_head_fcs=int(c["box_head_fcs"]), box_head_norm=bool(c["box_head_norm"]),
        class_agnostic=bool(c["class_agnostic"]), stage_ious=[float(v) for v in c["stage_ious"]],
        stage_stds=[[float(v) for v in s] for s in c["stage_stds"]],
        stage_loss_weights=[float(v) for v in c["stage_loss_weights"]])


@torch.no_grad()
def detect(model: TwoStageDetector, images: Sequence[np.ndarray], *, scale: Sequence[int] = (800, 1333),
           mask_thresh: float = 0.5) -> list[dict]:
    """The original test pipeline for RGB uint8 H×W×3 `images`: keep-ratio resize of the uint8 image to
    `scale` (short, long) with OpenCV bilinear, the network, boxes scaled back to the image, masks pasted.
    Returns per image `boxes` (x1 y1 x2 y2, image pixels), `scores`, `labels` (1..K) and, with masks,
    `masks` (bool N×H×W)."""
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
        rois = boxes_to_rois([torch.cat([xy, xy + wh], 1).to(x.device)])
        return m.roi_heads.dummy_forward(feats[:4], rois, self.mask_rois)
