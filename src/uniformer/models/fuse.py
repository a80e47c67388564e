"""Inference fusion: fold every exact linear identity into the adjacent weights.

BatchNorms go into the adjacent convolution (1×1 after, stems before) and the final one into the
classifier(s), since pooling and a per-channel affine map commute; LayerNorm affines into the next
Linear (not before window attention, which zero-pads after it); layer scales into the output
projections; the DPE residual onto its kernel's centre tap. FFNs become `InferenceMlp` (fc1 + GELU
as one oneDNN kernel on CPU), and the model runs on channels-last maps, where pointwise convolutions
are matrix products and the token views need no copies. Inference only: BatchNorm statistics are frozen.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import (
    ConvEmbed,
    DynamicPositionEmbedding,
    GlobalBlock,
    LocalBlock,
    dense,
    from_channels_last_view,
    to_channels_last_view,
)
from .uniformer import UniFormer
from .uniformer_light import UniFormerLight

__all__ = ["fuse", "InferenceMlp"]


class InferenceMlp(nn.Module):
    """fc1 → GELU → fc2 on channels-last tokens (..., C), for maps as well as token sequences.

    CPU float32 fuses the (exact erf) GELU into fc1's oneDNN product: a separate pass over the wide
    hidden activations costs more than the product itself in the high-resolution stages.
    """

    def __init__(self, fc1: nn.Module, fc2: nn.Module, on_maps: bool):
        super().__init__()
        self.on_maps = on_maps
        self.w1 = nn.Parameter(fc1.weight.detach().flatten(1).clone(), requires_grad=False)
        self.b1 = nn.Parameter(fc1.bias.detach().clone(), requires_grad=False)
        self.w2 = nn.Parameter(fc2.weight.detach().flatten(1).clone(), requires_grad=False)
        self.b2 = nn.Parameter(fc2.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = to_channels_last_view(x) if self.on_maps else x
        y = dense(dense(tokens, self.w1, self.b1, gelu=True), self.w2, self.b2)
        return from_channels_last_view(y) if self.on_maps else y


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval as y = s·x + t."""
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return s, bn.bias - bn.running_mean * s


def _fold_input_affine(layer: nn.Module, s: torch.Tensor, t: torch.Tensor) -> None:
    """layer(s·x + t) → layer'(x) for a Linear or a 1×1 convolution (no padding involved)."""
    w = layer.weight
    flat = w.reshape(w.shape[0], w.shape[1])
    shift = flat @ t
    layer.bias = nn.Parameter(shift if layer.bias is None else layer.bias + shift)
    layer.weight.copy_((flat * s[None, :]).reshape(w.shape))


def _fold_output_affine(layer: nn.Module, s: torch.Tensor, t: torch.Tensor | None = None) -> None:
    """s·layer(x) + t → layer'(x) (per output channel) for a Linear or any convolution."""
    shape = (-1,) + (1,) * (layer.weight.ndim - 1)
    layer.weight.mul_(s.reshape(shape))
    bias = layer.bias * s if layer.bias is not None else torch.zeros_like(s)
    if t is not None:
        bias = bias + t
    layer.bias = nn.Parameter(bias)


def _fold_layer_norm_affine(norm: nn.LayerNorm, layer: nn.Linear) -> nn.LayerNorm:
    _fold_input_affine(layer, norm.weight, norm.bias)
    return nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)


def _fold_sequential_bn(seq: nn.Sequential) -> nn.Sequential:
    """conv → BN pairs inside a stem become one conv each."""
    out = []
    for m in seq:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and out and isinstance(out[-1], nn.modules.conv._ConvNd):
            _fold_output_affine(out[-1], *_bn_affine(m))
        else:
            out.append(m)
    return nn.Sequential(*out)


def _fuse_branch_outputs(blk: LocalBlock | GlobalBlock, attn_out: nn.Module, on_maps: bool) -> None:
    """Layer scales into the branches' output layers; the FFN becomes an InferenceMlp."""
    if blk.gamma_1 is not None:
        _fold_output_affine(attn_out, blk.gamma_1.flatten())
        _fold_output_affine(blk.mlp.fc2, blk.gamma_2.flatten())
        blk.gamma_1 = blk.gamma_2 = None
    blk.mlp = InferenceMlp(blk.mlp.fc1, blk.mlp.fc2, on_maps)


def _fuse_local(blk: LocalBlock) -> None:
    _fold_input_affine(blk.conv1, *_bn_affine(blk.norm1))
    _fold_input_affine(blk.mlp.fc1, *_bn_affine(blk.norm2))
    blk.norm1, blk.norm2 = nn.Identity(), nn.Identity()
    _fuse_branch_outputs(blk, blk.conv2, on_maps=True)


def _fuse_global(blk: GlobalBlock) -> None:
    if blk.window_size is None:  # windows zero-pad after the affine: keep it there
        blk.norm1 = _fold_layer_norm_affine(blk.norm1, blk.attn.qkv)
    blk.norm2 = _fold_layer_norm_affine(blk.norm2, blk.mlp.fc1)
    _fuse_branch_outputs(blk, blk.attn.proj, on_maps=False)


def _fuse_head(model: UniFormer | UniFormerLight) -> None:
    if isinstance(model.head, nn.Linear) and model.global_pool:
        s, t = _bn_affine(model.norm)
        _fold_input_affine(model.head, s, t)
        if getattr(model, "aux_head", None) is not None:
            _fold_input_affine(model.aux_head, s, t)
        model.norm = nn.Identity()


@torch.no_grad()
def fuse(model: nn.Module) -> nn.Module:
    """Return an inference-only copy of a UniFormer model with the same outputs and fewer ops."""
    if not isinstance(model, (UniFormer, UniFormerLight)):
        raise TypeError(f"fuse() takes a UniFormer or UniFormerLight model, not {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    for m in list(model.modules()):
        if isinstance(m, DynamicPositionEmbedding):
            m.fold_identity()
        elif isinstance(m, LocalBlock):
            _fuse_local(m)
        elif isinstance(m, GlobalBlock):  # EvolvingGlobalBlock too
            _fuse_global(m)
        elif isinstance(m, ConvEmbed):
            m.proj = _fold_sequential_bn(m.proj)
    if not getattr(model, "features_only", False):
        _fuse_head(model)
    model.requires_grad_(False)
    model.channels_last = True
    return model
