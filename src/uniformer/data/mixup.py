"""Mixup / CutMix with label smoothing for image batches and 5-D clip batches.

timm's :class:`~timm.data.Mixup` cuts its CutMix box out of the last two dimensions, which on a clip
batch ``(B, C, T, H, W)`` are time and height. :class:`ClipMixup` therefore mixes the view
``(B, C*T, H, W)`` in place: the same box and weight for every frame of a clip. It also accepts odd
batches (timm asserts an even one): the last sample is left unmixed with the smoothed one-hot target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.data.mixup import Mixup, mixup_target


class ClipMixup:
    """``(x, target) -> (mixed_x, soft_target)``: ``x`` ``(B, C, H, W)`` or ``(B, C, T, H, W)`` is mixed in place,
    class indices ``(B,)`` become a float ``(B, num_classes)`` distribution (for a soft-target cross-entropy)."""

    def __init__(self, mixup: Mixup) -> None:
        self.mixup = mixup

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim not in (4, 5):
            raise ValueError(f"mixup expects (B, C, H, W) or (B, C, T, H, W) input, got shape {tuple(x.shape)}")
        if target.ndim != 1 or target.shape[0] != x.shape[0]:
            raise ValueError(f"mixup expects class-index targets of shape ({x.shape[0]},), got {tuple(target.shape)}")
        if x.ndim == 5 and not x.is_contiguous():
            x = x.contiguous()  # the (C*T) fold below needs a view that shares memory with x
        batch = x.shape[0]
        if batch % 2 == 1:
            tail_t = mixup_target(target[-1:], self.mixup.num_classes, 1.0, self.mixup.label_smoothing)
            if batch == 1:
                return x, tail_t
            _, head_t = self(x[:-1], target[:-1])  # x[:-1] is a view: timm mixes it in place inside x
            return x, torch.cat([head_t, tail_t.to(head_t.dtype)])
        if x.ndim == 5:
            b, c, t, h, w = x.shape
            folded = x.view(b, c * t, h, w)
            folded, soft = self.mixup(folded, target)
            return folded.view(b, c, t, h, w), soft
        return self.mixup(x, target)


def build_mixup(cfg: Mapping[str, Any], num_classes: int) -> ClipMixup | None:
    """Mixup/CutMix from the mixup keys of the ``data:`` section (:mod:`uniformer.data.config`), or ``None`` when
    both are off (label smoothing is then the loss function's job)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"build_mixup: num_classes must be a positive integer, got {num_classes!r}")

    def number(key: str, default: float, lo: float, hi: float | None = None) -> float:
        value = default if cfg.get(key) is None else cfg[key]
        bad_type = isinstance(value, bool) or not isinstance(value, int | float)
        if bad_type or value < lo or (hi is not None and value > hi):
            bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise ValueError(f"data config: key '{key}' = {value!r} is invalid: expected a number {bound}")
        return float(value)

    mixup_alpha = number("mixup", 0.0, 0.0)
    cutmix_alpha = number("cutmix", 0.0, 0.0)
    minmax = cfg.get("cutmix_minmax")
    if minmax is not None:
        if not isinstance(minmax, list | tuple) or len(minmax) != 2 or not 0 < minmax[0] < minmax[1] <= 1:
            raise ValueError(f"data config: key 'cutmix_minmax' = {minmax!r} is invalid: expected [min, max] in (0, 1]")
        minmax = [float(minmax[0]), float(minmax[1])]
    if mixup_alpha <= 0 and cutmix_alpha <= 0 and minmax is None:
        return None
    mode = cfg.get("mixup_mode", "batch")
    if mode not in ("batch", "pair", "elem"):
        raise ValueError(f"data config: key 'mixup_mode' = {mode!r} is invalid: expected 'batch', 'pair' or 'elem'")
    return ClipMixup(Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, cutmix_minmax=minmax,
                           prob=number("mixup_prob", 1.0, 0.0, 1.0),
                           switch_prob=number("mixup_switch_prob", 0.5, 0.0, 1.0), mode=mode,
                           label_smoothing=number("label_smoothing", 0.1, 0.0, 1.0), num_classes=num_classes))
