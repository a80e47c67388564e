"""Building blocks shared by every UniFormer network, for images (2-D) and videos (3-D).

A block is the same for both: `ndim` picks 2-D or 3-D convolutions and norms.
Parameter names follow the original checkpoints (`pos_embed`, `norm1`, `conv1`, `attn`, ...)
so that released weights load without renaming.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.flop_counter import register_flop_formula

__all__ = ["DynamicPositionEmbedding", "LocalBlock", "GlobalMHRA", "GlobalBlock", "PatchEmbed", "ConvEmbed", "dense"]


CONV_ND = {2: nn.Conv2d, 3: nn.Conv3d}  # by the number of spatial(-temporal) axes
BATCH_NORM_ND = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def to_channels_last_view(x: torch.Tensor) -> torch.Tensor:
    """B×C×(T×)H×W → B×(T×)H×W×C (explicit axes: ONNX exporters reject negative permutations)."""
    return x.permute(0, *range(2, x.ndim), 1)


def from_channels_last_view(x: torch.Tensor) -> torch.Tensor:
    """B×(T×)H×W×C → B×C×(T×)H×W."""
    return x.permute(0, x.ndim - 1, *range(1, x.ndim - 1))


def channels_last_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a LayerNorm over the channel axis of a B×C×(T×)H×W map."""
    return from_channels_last_view(norm(to_channels_last_view(x)))


def is_channels_last(x: torch.Tensor) -> bool:
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    return x.ndim in (4, 5) and x.is_contiguous(memory_format=fmt) and not x.is_contiguous()


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    return x.contiguous(memory_format=fmt) if channels_last else x


_ONEDNN_BUILT = torch.backends.mkldnn.is_available()  # constant; the call itself would break torch.compile graphs


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """oneDNN's CPU matmul op has no autograd and no export/tracing support: inference on CPU float32 only."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32 \
        and _ONEDNN_BUILT \
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)) \
        and not torch.is_autocast_enabled("cpu") and not torch.jit.is_scripting() and not torch.jit.is_tracing() \
        and not torch.compiler.is_exporting()


def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """`x @ weight.T + bias` over the last axis (then an exact erf GELU when `gelu`).

    CPU float32 inference runs oneDNN's matmul with the GELU fused: 1.3-3× faster than `F.linear`'s MKL
    `addmm` on the many-token, few-channel products of the early stages (e.g. 12544×64 → 256, AVX2 AMD
    EPYC), as fast on the deep ones; `torch.compile` keeps it as an external kernel. Elsewhere: `F.linear`.
    """
    if _onednn_applies(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


if _ONEDNN_BUILT:
    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _onednn_linear_flops(x_shape, *args, out_shape, **kwargs) -> int:
        """`FlopCounterMode` (used by `uniformer info`) counts `dense`'s oneDNN products like `F.linear`'s."""
        return 2 * math.prod(out_shape) * x_shape[-1]


def pointwise(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1×1(×1) convolution; on a channels-last map it runs as one matrix product over channels,
    which oneDNN executes several times faster on CPUs than the convolution kernel."""
    if is_channels_last(x):
        return from_channels_last_view(dense(to_channels_last_view(x), conv.weight.flatten(1), conv.bias))
    return conv(x)


class DynamicPositionEmbedding(nn.Module):
    """DPE: `x + DWConv3×3(×3)(x)`. Zero padding lets the depthwise kernel encode position,
    so any input size works without interpolating a position table.

    `fold_identity()` adds the residual to the kernel's centre tap: same output, one op less.
    """

    def __init__(self, dim: int, ndim: int = 2):
        super().__init__()
        self.ndim = ndim
        conv = CONV_ND[ndim](dim, dim, 3, padding=1, groups=dim)  # its initialisation, as the original
        self.weight, self.bias = conv.weight, conv.bias
        self.identity_folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv2d if self.ndim == 2 else F.conv3d
        y = conv(x, self.weight, self.bias, padding=1, groups=self.weight.shape[0])
        return y if self.identity_folded else x + y

    @torch.no_grad()
    def fold_identity(self) -> None:
        if not self.identity_folded:
            self.weight[(slice(None), 0) + (1,) * self.ndim] += 1.0
            self.identity_folded = True


class ConvMlp(nn.Module):
    """Pointwise-conv FFN of the local blocks: 1×1 conv, GELU, 1×1 conv."""

    def __init__(self, dim: int, hidden: int, ndim: int = 2, drop: float = 0.0):
        super().__init__()
        conv = CONV_ND[ndim]
        self.fc1 = conv(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = conv(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(pointwise(self.fc2, self.drop(self.act(pointwise(self.fc1, x)))))


def _layer_scale(init: float | None, shape: tuple[int, ...]) -> nn.Parameter | None:
    return None if init is None else nn.Parameter(init * torch.ones(shape))


def scaled(y: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
    """A branch's output times its layer scale, if any."""
    return y if gamma is None else gamma * y


class LocalBlock(nn.Module):
    """Shallow-stage block (the original `CBlock`): DPE, local MHRA, convolutional FFN.

    Local MHRA = BatchNorm → 1×1 conv `conv1` (value V) → depthwise 5×5(×5) conv `attn`
    (a learnable local affinity, one head per channel) → 1×1 conv `conv2` (U).
    `layer_scale` (an initial value) adds per-channel `gamma_1`/`gamma_2`, as in the released
    layer-scaled light video checkpoints.
    """

    def __init__(self, dim: int, ndim: int = 2, mlp_ratio: float = 4.0, drop: float = 0.0,
                 drop_path: float = 0.0, layer_scale: float | None = None):
        super().__init__()
        conv, norm = CONV_ND[ndim], BATCH_NORM_ND[ndim]
        self.pos_embed = DynamicPositionEmbedding(dim, ndim)
        self.norm1 = norm(dim)
        self.conv1 = conv(dim, dim, 1)
        self.attn = conv(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = conv(dim, dim, 1)
        self.norm2 = norm(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), ndim, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        scale_shape = (1, dim) + (1,) * ndim
        self.gamma_1 = _layer_scale(layer_scale, scale_shape)
        self.gamma_2 = _layer_scale(layer_scale, scale_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_embed(x)
        y = pointwise(self.conv2, self.attn(pointwise(self.conv1, self.norm1(x))))
        x = x + self.drop_path(scaled(y, self.gamma_1))
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(scaled(y, self.gamma_2))


class GlobalMHRA(nn.Module):
    """Global relation aggregator: multi-head self-attention over every token.

    Runs through `scaled_dot_product_attention`; `fused_attn=False` forms the attention
    matrix explicitly, as the original code does (the eager reference for benchmarks).
    `forward(..., cls_attention=True)` also returns the class token's attention to every
    token, averaged over heads: the score the light models use to evolve tokens.
    """

    def __init__(self, dim: int, head_dim: int = 64, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"head_dim={head_dim} does not divide the width {dim}")
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused_attn = True

    def forward(self, x: torch.Tensor, cls_attention: bool = False):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        cls_attn = None
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            if cls_attention:
                cls_attn = ((q[:, :, :1] * self.scale) @ k.transpose(-2, -1)).softmax(-1)[:, :, 0].mean(1)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)
            if cls_attention:
                cls_attn = attn[:, :, 0].mean(1)
            x = F.dropout(attn, drop) @ v
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))
        return (x, cls_attn) if cls_attention else x


class GlobalBlock(nn.Module):
    """Deep-stage block (the original `SABlock`): DPE, LayerNorm + global MHRA, MLP.

    `window_size` restricts attention to non-overlapping w×w windows (the dense-prediction
    `SABlock_Windows`): the map is zero-padded bottom/right to a multiple of w after the
    LayerNorm, all windows attend in one batched call, and the result is cropped back.
    """

    def __init__(self, dim: int, ndim: int = 2, head_dim: int = 64, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 layer_scale: float | None = None, window_size: int | None = None):
        super().__init__()
        if window_size is not None and ndim != 2:
            raise ValueError("window attention is defined for 2-D maps only")
        self.window_size = window_size
        self.pos_embed = DynamicPositionEmbedding(dim, ndim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = GlobalMHRA(dim, head_dim, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma_1 = _layer_scale(layer_scale, (dim,))
        self.gamma_2 = _layer_scale(layer_scale, (dim,))

    def _window_attention(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        w = self.window_size
        x = x.view(B, H, W, C)
        pad_b, pad_r = (w - H % w) % w, (w - W % w) % w
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        x = x.view(B, Hp // w, w, Wp // w, w, C).transpose(2, 3).reshape(-1, w * w, C)
        x = self.attn(x)
        x = x.view(B, Hp // w, Wp // w, w, w, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        return x[:, :H, :W].reshape(B, H * W, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_embed(x)
        shape = x.shape
        x = x.flatten(2).transpose(1, 2)
        if self.window_size is None:
            y = self.attn(self.norm1(x))
        else:
            y = self._window_attention(self.norm1(x), shape[-2], shape[-1])
        x = x + self.drop_path(scaled(y, self.gamma_1))
        y = self.mlp(self.norm2(x))
        x = x + self.drop_path(scaled(y, self.gamma_2))
        return x.transpose(1, 2).reshape(shape)


class PatchEmbed(nn.Module):
    """Non-overlapping strided convolution followed by a LayerNorm over channels.

    Video: the first embedding is 3×p×p with stride 2×p×p and temporal padding 1 (time is
    halved); the others are 1×p×p.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int, ndim: int = 2, temporal_stride: int = 1):
        super().__init__()
        if ndim == 2:
            self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        elif temporal_stride == 2:
            self.proj = nn.Conv3d(in_chans, dim, (3, patch_size, patch_size), (2, patch_size, patch_size), (1, 0, 0))
        else:
            self.proj = nn.Conv3d(in_chans, dim, (1, patch_size, patch_size), (1, patch_size, patch_size))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last_norm(self.norm, self.proj(x))


class ConvEmbed(nn.Module):
    """Overlapping embedding of S+ and the light models: 3×3(×3) stride-2 convs with BatchNorm (no LayerNorm).

    `stem`: two convs, GELU between (video: the first keeps time, stride 1×2×2); else one conv (S+ downsampling).
    """

    def __init__(self, in_chans: int, dim: int, ndim: int = 2, stem: bool = False):
        super().__init__()
        conv, norm = CONV_ND[ndim], BATCH_NORM_ND[ndim]
        if stem:
            first_stride = 2 if ndim == 2 else (1, 2, 2)
            self.proj = nn.Sequential(conv(in_chans, dim // 2, 3, stride=first_stride, padding=1), norm(dim // 2),
                                      nn.GELU(), conv(dim // 2, dim, 3, stride=2, padding=1), norm(dim))
        else:
            self.proj = nn.Sequential(conv(in_chans, dim, 3, stride=2, padding=1), norm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
