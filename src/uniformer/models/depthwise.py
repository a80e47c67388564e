"""3-D depthwise convolutions as sums of shifted taps, for compiled GPU inference of the video models.

cuDNN has no fast kernel for 3-D depthwise convolutions (the 5×5×5 local MHRA and the 3×3×3 DPE of every
video block): in a compiled bfloat16 `uniformer_video_small` they take most of the GPU time. Written as
`Σ w[:, a, b, c] · x_padded[..., a:a+T, b:b+H, c:c+W]`, `torch.compile` (inductor) generates one fused kernel
per convolution instead. Measured on an H200 (torch 2.11, batch 8, 16×224², bfloat16 + channels-last +
compile): 155 → 435 clips/s. The price is compile time: about 220 s instead of 30 s for that model, since
each 5×5×5 convolution unrolls into 125 terms. Without `torch.compile` the taps are slower than cuDNN: use
this only together with it.

Two ways to write the same sum for inductor: `unrolled` (one term per tap in the graph, the measured form
above) and a reduction over a tap axis of the padded input's sliding windows (`unrolled=False`): one small
reduction per convolution, whose compile time does not grow with the kernel's 125 taps. The second is meant to
cut that compile time; its GPU speed has not been measured yet (`benchmarks/video_depthwise_experiment.py` times
both). Eager, the reduction form materialises every window (125x the input): compile it.

The taps accumulate in float32 whatever the input dtype, so the function is the convolution's up to rounding.
Parameters keep their names (`attn.weight`, `pos_embed.weight`, ...), so state dicts load unchanged.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DynamicPositionEmbedding

__all__ = ["depthwise_conv3d_taps", "ShiftedTapsDepthwise3d", "use_shifted_taps"]


def depthwise_conv3d_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          unrolled: bool = True) -> torch.Tensor:
    """`F.conv3d(x, weight, bias, padding=k // 2, groups=C)` for odd kernels, as a sum of shifted products:
    one term per tap (`unrolled`), or one reduction over the taps of each output's window."""
    kt, kh, kw = weight.shape[2:]
    if not (kt % 2 and kh % 2 and kw % 2) or weight.shape[1] != 1:
        raise ValueError(f"depthwise_conv3d_taps takes depthwise weights with odd kernels, not {tuple(weight.shape)}")
    t, h, w = x.shape[2:]
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, kt // 2, kt // 2))
    taps = weight.float()
    if unrolled:
        out = 0.0
        for a, b, c in itertools.product(range(kt), range(kh), range(kw)):
            out = out + padded[:, :, a:a + t, b:b + h, c:c + w].float() * taps[:, 0, a, b, c].view(1, -1, 1, 1, 1)
    else:  # windows: (B, C, T, H, W, kt, kh, kw), a view of `padded`
        windows = padded.unfold(2, kt, 1).unfold(3, kh, 1).unfold(4, kw, 1)
        out = (windows.float() * taps.view(1, -1, 1, 1, 1, kt, kh, kw)).sum((-3, -2, -1))
    if bias is not None:
        out = out + bias.float().view(1, -1, 1, 1, 1)
    return out.to(x.dtype)


class ShiftedTapsDepthwise3d(nn.Module):
    """A 3-D depthwise convolution ('same' zero padding) computed by `depthwise_conv3d_taps`; with `residual`,
    `x + conv(x)` (the DPE)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, residual: bool = False,
                 unrolled: bool = True):
        super().__init__()
        self.weight, self.bias, self.residual, self.unrolled = weight, bias, residual, unrolled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = depthwise_conv3d_taps(x, self.weight, self.bias, self.unrolled)
        return x + y if self.residual else y


def use_shifted_taps(model: nn.Module, unrolled: bool = True) -> int:
    """Replace, in place, every 3-D depthwise convolution of `model` (local MHRA `attn` convolutions and 3-D
    DPEs) by `ShiftedTapsDepthwise3d` sharing its parameters (`unrolled`: which form of the sum); returns how
    many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv3d) and child.groups == child.in_channels == child.out_channels \
                    and max(child.kernel_size) > 1 and child.padding == tuple(k // 2 for k in child.kernel_size) \
                    and child.stride == (1, 1, 1) and child.dilation == (1, 1, 1):
                setattr(parent, name, ShiftedTapsDepthwise3d(child.weight, child.bias, unrolled=unrolled))
            elif isinstance(child, DynamicPositionEmbedding) and child.ndim == 3:
                setattr(parent, name, ShiftedTapsDepthwise3d(child.weight, child.bias, not child.identity_folded,
                                                             unrolled))
            else:
                continue
            replaced += 1
    return replaced
