"""Original mmdet checkpoints → this package's detectors: the neck and heads renamed to torchvision's Mask R-CNN
names (background moved first) or to the Cascade heads' mmdet-layout names. Unknown keys keep their own names,
so that loading reports them as unexpected."""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from .cascade import CascadeRoIHeads

__all__ = ["rename_keys", "convert_mmdet_keys", "convert_mmdet_cascade_keys", "mmdet_key_converter"]

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
        new = next((re.sub(pattern, repl, key) for pattern, repl in renames if re.match(pattern, key)), key)
        out[new] = value
    return out


def convert_mmdet_keys(heads: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> dict:
    """mmdet Mask R-CNN neck / head tensors → this model's names and class layout."""
    out = rename_keys(heads, _RENAMES)
    for new, value in out.items():
        if new.startswith("roi_heads.box_predictor.cls_score."):
            out[new] = torch.cat([value[-1:], value[:-1]])  # background: last in mmdet, first in torchvision
        elif new.startswith("roi_heads.box_predictor.bbox_pred."):
            out[new] = torch.cat([value.new_zeros((4,) + value.shape[1:]), value])  # no background deltas in mmdet
        elif new.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
            out[new] = torch.cat([value.new_zeros((1,) + value.shape[1:]), value])
    return out


_CASCADE_RENAMES = (
    (r"^roi_head\.bbox_head\.(\d+)\.", r"roi_heads.box_heads.\1."),
    (r"^roi_head\.mask_head\.(\d+)\.", r"roi_heads.mask_heads.\1."),
)


def convert_mmdet_cascade_keys(heads: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> dict:
    """mmdet Cascade Mask R-CNN neck / head tensors → this model's names (the heads keep mmdet's layout)."""
    return rename_keys(heads, _NECK_RPN_RENAMES + _CASCADE_RENAMES)


def mmdet_key_converter(model: nn.Module):
    """The function renaming an original mmdet checkpoint's neck and heads for `model`."""
    return convert_mmdet_cascade_keys if isinstance(model.roi_heads, CascadeRoIHeads) else convert_mmdet_keys
