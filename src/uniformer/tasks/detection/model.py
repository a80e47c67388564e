"""Mask R-CNN with a UniFormer backbone, assembled from torchvision's detection models and ops.

UniFormer (features_only, stage 3 hybrid with 14×14 windows by default) → torchvision's
FeaturePyramidNetwork with LastLevelMaxPool (five levels, strides 4..64) → torchvision's MaskRCNN
(RPN, RoI heads, mask head). Anchors, samplers and thresholds follow the original mmdet config
(`mask_rcnn_uniformer_fpn.py`): one anchor size per level 32..512, ratios 0.5/1/2, RPN 256 samples
(half positive) at IoU 0.7/0.3, 2000→1000 proposals in training and 1000→1000 in testing, RoI
512 samples (a quarter positive) at IoU 0.5, box-coder weights 10/10/5/5 (mmdet's stds
0.1/0.1/0.2/0.2), RoIAlign 7×7 / 14×14 with adaptive sampling, 100 detections above 0.05 after NMS 0.5.

`convert_mmdet_keys` renames an original mmdet Mask R-CNN checkpoint's neck and heads to these
modules (mmdet puts the background class last, torchvision first; mmdet's class-specific box
regression and mask logits have no background row).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = ["UniFormerFPN", "TrainTestResize", "build_mask_rcnn", "convert_mmdet_keys", "MaskRCNNFlops"]


class TrainTestResize(GeneralizedRCNNTransform):
    """torchvision's resize and normalisation with separate sizes: training draws the short side from
    `train_sizes`, testing uses `test_size` (torchvision's own transform tests at the last training size)."""

    def __init__(self, train_sizes: Sequence[int], test_size: int, max_size: int, mean, std):
        super().__init__(tuple(int(s) for s in train_sizes) + (int(test_size),), max_size, list(mean), list(std))
        self.train_sizes, self.test_size = tuple(int(s) for s in train_sizes), int(test_size)

    def torch_choice(self, k: list[int]) -> int:
        """Called in training only: one of the training sizes (the last entry of `min_size` is the test size)."""
        return super().torch_choice(list(self.train_sizes))


class UniFormerFPN(nn.Module):
    """The four UniFormer maps through an FPN, plus a max-pooled fifth level; `out_channels` for torchvision."""

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def build_mask_rcnn(body: nn.Module, num_classes: int, *, with_masks: bool = True, fpn_channels: int = 256,
                    box_head_dim: int = 1024, mask_head_channels: Sequence[int] = (256, 256, 256, 256),
                    min_size: int | Sequence[int] = 800, test_size: int | None = None, max_size: int = 1333,
                    anchor_sizes=(32, 64, 128, 256, 512),
                    rpn_batch: int = 256, roi_batch: int = 512, mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225), test_score_thresh: float = 0.05, detections_per_img: int = 100,
                    rpn_train_proposals: Sequence[int] = (2000, 1000), rpn_test_proposals: Sequence[int] = (1000, 1000),
                    ) -> MaskRCNN | FasterRCNN:
    """torchvision Mask R-CNN (or Faster R-CNN without masks) on a UniFormer `body`; `num_classes` excludes
    the background. `min_size` may be a list: training draws one per image; testing uses `test_size`
    (default: the last of `min_size`).
    `rpn_*_proposals`: (top boxes per level before NMS, boxes kept after NMS) per image."""
    backbone = UniFormerFPN(body, fpn_channels)
    levels = ["0", "1", "2", "3"]
    anchors = AnchorGenerator(sizes=tuple((s,) for s in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    common = dict(
        num_classes=None, min_size=tuple(min_size) if isinstance(min_size, Sequence) else min_size,
        max_size=max_size, image_mean=list(mean), image_std=list(std),
        rpn_anchor_generator=anchors, rpn_pre_nms_top_n_train=int(rpn_train_proposals[0]),
        rpn_pre_nms_top_n_test=int(rpn_test_proposals[0]), rpn_post_nms_top_n_train=int(rpn_train_proposals[1]),
        rpn_post_nms_top_n_test=int(rpn_test_proposals[1]), rpn_nms_thresh=0.7,
        rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3, rpn_batch_size_per_image=rpn_batch, rpn_positive_fraction=0.5,
        box_roi_pool=MultiScaleRoIAlign(levels, 7, sampling_ratio=0),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head_dim),
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes + 1),
        box_score_thresh=test_score_thresh, box_nms_thresh=0.5, box_detections_per_img=detections_per_img,
        box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5, box_batch_size_per_image=roi_batch,
        box_positive_fraction=0.25, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    )
    if not with_masks:
        model = FasterRCNN(backbone, **common)
    else:
        mask_head_channels = tuple(mask_head_channels)
        model = MaskRCNN(backbone, **common, mask_roi_pool=MultiScaleRoIAlign(levels, 14, sampling_ratio=0),
                         mask_head=MaskRCNNHeads(fpn_channels, mask_head_channels, 1),
                         mask_predictor=MaskRCNNPredictor(mask_head_channels[-1], mask_head_channels[-1],
                                                          num_classes + 1))
    train_sizes = list(min_size) if isinstance(min_size, Sequence) else [min_size]
    model.transform = TrainTestResize(train_sizes, train_sizes[-1] if test_size is None else test_size, max_size,
                                      mean, std)
    return model


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


def convert_mmdet_keys(heads: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> dict:
    """mmdet Mask R-CNN neck / head tensors → this model's names and class layout (unknown keys are kept
    under their own names, so that they are reported as unexpected)."""
    out = {}
    for key, value in heads.items():
        new = key
        for pattern, repl in _RENAMES:
            if re.match(pattern, key):
                new = re.sub(pattern, repl, key)
                break
        if new.startswith("roi_heads.box_predictor.cls_score."):
            value = torch.cat([value[-1:], value[:-1]])  # background: last in mmdet, first in torchvision
        elif new.startswith("roi_heads.box_predictor.bbox_pred."):
            value = torch.cat([value.new_zeros((4,) + value.shape[1:]), value])  # no background deltas in mmdet
        elif new.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
            value = torch.cat([value.new_zeros((1,) + value.shape[1:]), value])
        out[new] = value
    return out


class MaskRCNNFlops(nn.Module):
    """The work of one Mask R-CNN test image as mmdet's `get_flops` counts it (`forward_dummy`): backbone,
    FPN, RPN head, box head on 1000 proposals, mask head on 100 of them."""

    def __init__(self, model: MaskRCNN | FasterRCNN, proposals: int = 1000, mask_rois: int = 100):
        super().__init__()
        self.model, self.proposals, self.mask_rois = model, proposals, mask_rois

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        feats = m.backbone(x)
        m.rpn.head(list(feats.values()))
        h, w = x.shape[-2:]
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(self.proposals, 2, generator=g) * torch.tensor([w * 0.75, h * 0.75])
        wh = 16 + torch.rand(self.proposals, 2, generator=g) * torch.tensor([w * 0.25, h * 0.25])
        boxes = torch.cat([xy, xy + wh], 1).to(x.device)
        sizes = [(h, w)]
        box_feats = m.roi_heads.box_head(m.roi_heads.box_roi_pool(feats, [boxes], sizes))
        scores, _ = m.roi_heads.box_predictor(box_feats)
        if m.roi_heads.has_mask():
            mask_feats = m.roi_heads.mask_head(m.roi_heads.mask_roi_pool(feats, [boxes[:self.mask_rois]], sizes))
            return m.roi_heads.mask_predictor(mask_feats)
        return scores
