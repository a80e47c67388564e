"""Mask R-CNN / Cascade Mask R-CNN with a UniFormer backbone, faithful to mmdetection 2.11: UniFormer → torchvision's
FPN (+ max-pooled fifth level) → the RPN (`rpn.py`) and RoI heads (`roi_heads.py`, `cascade.py`). This module: the
detector, its builder, the test pipeline and the FLOP counter.
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

from .anchors import AnchorGenerator
from .boxes import boxes_to_rois, paste_masks
from .cascade import CascadeRoIHeads, ConvFCBoxHead, FCNMaskHead
from .data import resize_keep_ratio
from .roi_heads import MaskRCNNRoIHeads
from .rpn import RegionProposalNetwork

__all__ = ["UniFormerFPN", "TwoStageDetector", "build_detector", "detect", "DetectorFlops"]


class UniFormerFPN(nn.Module):
    """The four UniFormer maps through an FPN of `out_channels`, plus a max-pooled fifth level."""

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool())

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
        h, w = (math.ceil(max(s[i] for s in sizes) / d) * d for i in (0, 1))
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
            return {**losses, **self.roi_heads(feats[:4], [p[:, :4] for p in proposals], sizes, targets)}
        if scale_factors is None:
            scale_factors = [x.new_ones(4)] * len(images)
        return self.roi_heads.predict(feats[:4], [p[:, :4] for p in proposals], sizes, scale_factors)


# per model type, the original config's `box_loss`, `rpn_box_loss`, `rpn_allowed_border` (for null in a recipe)
_ORIGINAL_LOSSES = {"mask_rcnn": {"box_loss": "l1", "rpn_box_loss": "l1", "rpn_allowed_border": -1},
                    "cascade_mask_rcnn": {"box_loss": "giou", "rpn_box_loss": "smooth_l1", "rpn_allowed_border": 0}}


def build_detector(body: nn.Module, num_classes: int, model_cfg: Mapping, *, mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225), score_thresh: float = 0.05,
                   detections_per_img: int = 100) -> TwoStageDetector:
    """The detector of a recipe's `model` section on `body`: Mask R-CNN or Cascade Mask R-CNN (`type`), without
    masks if `with_masks` is false; `num_classes` excludes the background. Null `box_loss`, `rpn_box_loss` and
    `rpn_allowed_border` take the original config's value for the type."""
    if model_cfg["type"] not in _ORIGINAL_LOSSES:
        raise ValueError(f"model.type={model_cfg['type']!r}: expected one of {', '.join(_ORIGINAL_LOSSES)}")
    originals = _ORIGINAL_LOSSES[model_cfg["type"]]
    m = {**model_cfg, **{k: v for k, v in originals.items() if model_cfg.get(k) is None}}
    channels, dim = int(m["fpn_channels"]), int(m["box_head_dim"])
    mask_channels = [int(c) for c in m["mask_head_channels"]]
    backbone = UniFormerFPN(body, channels)
    train_proposals, test_proposals = m["rpn_train_proposals"], m["rpn_test_proposals"]  # (top per level, after NMS)
    rpn = RegionProposalNetwork(
        channels, AnchorGenerator(sizes=[int(s) for s in m["anchor_sizes"]]),
        pre_nms_top_n={"training": int(train_proposals[0]), "testing": int(test_proposals[0])},
        post_nms_top_n={"training": int(train_proposals[1]), "testing": int(test_proposals[1])},
        batch_size_per_image=int(m["rpn_batch"]), box_loss=str(m["rpn_box_loss"]),
        allowed_border=int(m["rpn_allowed_border"]))
    common = dict(score_thresh=float(score_thresh), detections_per_img=int(detections_per_img),
                  batch_size_per_image=int(m["roi_batch"]), box_loss=str(m["box_loss"]))
    if m["type"] == "mask_rcnn":
        mask_head = mask_predictor = None
        if m["with_masks"]:
            mask_head = MaskRCNNHeads(channels, mask_channels, 1)
            mask_predictor = MaskRCNNPredictor(mask_channels[-1], mask_channels[-1], num_classes + 1)
        roi_heads = MaskRCNNRoIHeads(TwoMLPHead(channels * 7 * 7, dim), FastRCNNPredictor(dim, num_classes + 1),
                                     mask_head, mask_predictor, **common)
    else:
        c = m["cascade"]
        ious = [float(v) for v in c["stage_ious"]]
        box_heads = [ConvFCBoxHead(channels, num_classes, num_convs=int(c["box_head_convs"]), conv_channels=channels,
                                   num_fcs=int(c["box_head_fcs"]), fc_dim=dim, norm=bool(c["box_head_norm"]),
                                   class_agnostic=bool(c["class_agnostic"])) for _ in ious]
        mask_heads = [FCNMaskHead(channels, num_classes, mask_channels) for _ in ious] if m["with_masks"] else None
        roi_heads = CascadeRoIHeads(box_heads, mask_heads, stage_ious=ious,
                                    stage_stds=[[float(v) for v in s] for s in c["stage_stds"]],
                                    stage_loss_weights=[float(v) for v in c["stage_loss_weights"]], **common)
    return TwoStageDetector(backbone, rpn, roi_heads, mean, std)


@torch.no_grad()
def detect(model: TwoStageDetector, images: Sequence[np.ndarray], *, scale: Sequence[int] = (800, 1333),
           mask_thresh: float = 0.5) -> list[dict]:
    """The original test pipeline on RGB uint8 H×W×3 `images` (keep-ratio resize to `scale` (short, long), the
    network, boxes scaled back, masks pasted): per image `boxes` (x1 y1 x2 y2, image pixels), `scores`, `labels`
    (1..K) and, with masks, `masks` (bool N×H×W)."""
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
        if "mask_probs" in out:  # mmdet pastes on the RoI boxes divided back by the scale factor (`* sf / sf`)
            masks = paste_masks(out["mask_probs"], out["boxes"] * sf / sf, *image.shape[:2], mask_thresh)
            result["masks"] = masks.cpu()
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
