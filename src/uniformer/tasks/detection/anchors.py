"""mmdet's anchors: fixed strides 4..64 with fractional base anchors (not torchvision's rounded ones)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["AnchorGenerator"]


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

