"""Semantic-segmentation networks of the paper: UniFormer + UperNet (+ FCN auxiliary head) or Semantic FPN, with
the attribute names of the original mmsegmentation heads, so that an original segmentor checkpoint loads key for key.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvModule", "UPerHead", "FCNHead", "FPNNeck", "FPNHead", "Segmentor"]


class ConvModule(nn.Module):
    """Conv → BatchNorm → ReLU (mmcv's ConvModule layout: `conv`, `bn`); without norm the conv has a bias."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0, norm: bool = True, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=not norm)
        self.bn = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _DecodeHead(nn.Module):
    """Dropout2d + 1×1 classifier `conv_seg` (normal init, std 0.01) shared by every head."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(_DecodeHead):
    """UperNet: pyramid pooling on the last map, an FPN over the others, all fused at stride 4."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1)) for s in pool_scales)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        pooled = [top] + [_up(m(top), top.shape[2:]) for m in self.psp_modules]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.bottleneck(torch.cat(pooled, 1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _up(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        outs = [outs[0]] + [_up(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, 1)))


class FCNHead(_DecodeHead):
    """The auxiliary head of UperNet: `num_convs` 3×3 ConvModules on one backbone map, then the classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 1, dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        self.convs = nn.Sequential(*(ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1)
                                     for i in range(num_convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))


class FPNNeck(nn.Module):
    """Feature pyramid (1×1 laterals with bias, nearest top-down, 3×3 outputs), no norm, no activation."""

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1, norm=False, act=False) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1, norm=False, act=False)
                                       for _ in in_channels)
        for m in self.modules():  # mmcv's FPN uses xavier-uniform convolutions
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]


class FPNHead(_DecodeHead):
    """Semantic FPN head: each level → (3×3 ConvModule + 2× upsampling) until stride 4, summed."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 strides: Sequence[int] = (4, 8, 16, 32), dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        self.scale_heads = nn.ModuleList()
        for i, stride in enumerate(strides):
            layers = []
            for k in range(max(1, int(math.log2(stride / strides[0])))):
                layers.append(ConvModule(in_channels[i] if k == 0 else channels, channels, 3, padding=1))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](feats[0])
        for head, f in zip(self.scale_heads[1:], feats[1:]):
            out = out + _up(head(f), out.shape[2:])
        return self.cls_seg(out)


class Segmentor(nn.Module):
    """Backbone (→ neck) → decode head (+ an auxiliary head for the training loss): `forward(img)` gives logits at
    the input's size, `forward(img, seg)` the losses (so that DistributedDataParallel sees training as a forward)."""

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, neck: nn.Module | None = None,
                 auxiliary_head: nn.Module | None = None, aux_in_index: int = 2, aux_weight: float = 0.4,
                 ignore_index: int = 255, num_classes: int | None = None):
        super().__init__()
        self.backbone = backbone
        if neck is not None:
            self.neck = neck
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head
        self.aux_in_index, self.aux_weight, self.ignore_index = aux_in_index, aux_weight, ignore_index
        self.num_classes = num_classes

    def _decode(self, img: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.backbone(img)
        x = self.neck(feats) if hasattr(self, "neck") else feats
        return self.decode_head(x), feats

    def forward(self, img: torch.Tensor, seg: torch.Tensor | None = None):
        if seg is not None:
            return self.losses(img, seg)
        logits, _ = self._decode(img)
        return _up(logits, img.shape[2:])

    def losses(self, img: torch.Tensor, seg: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy of the decode head (and 0.4 × that of the auxiliary head) against label maps
        (B×H×W, `ignore_index` for unlabelled pixels), the logits upsampled to the labels' size."""
        logits, feats = self._decode(img)
        out = {"loss_seg": self._ce(logits, seg)}
        if hasattr(self, "auxiliary_head"):
            out["loss_aux"] = self.aux_weight * self._ce(self.auxiliary_head(feats[self.aux_in_index]), seg)
        return out

    def _ce(self, logits: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        logits = _up(logits, seg.shape[1:])
        if not (seg != self.ignore_index).any():
            return logits.sum() * 0.0  # an all-ignored batch contributes nothing (and no NaN)
        return F.cross_entropy(logits, seg, ignore_index=self.ignore_index)
