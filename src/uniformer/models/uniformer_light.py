"""Light UniFormer (XS, XXS): the hourglass design of the TPAMI paper, for images and videos.

Stages 1–2 are the usual local blocks behind an overlapping conv stem. Stages 3–4 carry a
class token and evolve tokens as in Evo-ViT: a running score (the class token's attention,
mixed over blocks with `trade_off`) ranks the tokens; a block with prune ratio r < 1 runs
attention and MLP only on [class, top r·N tokens, one score-weighted representative of the
rest], adds the representative's update to every dropped token, and restores the order.
The score is passed from block to block, never kept in globals. Training also returns the
class token's logits, head_cls(norm_cls(cls)).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs
from torch import nn

from .layers import BATCH_NORM_ND, ConvEmbed, GlobalBlock, scaled, to_memory_format
from .uniformer import (
    _ModelApi,
    classifier,
    drop_path_rates,
    init_weights,
    layer_scale_init,
    pretrained_cfgs,
    register_variants,
)
from .variants import LIGHT_MODEL_ARGS

__all__ = ["UniFormerLight", "EvolvingGlobalBlock"]


def _gather_tokens(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x: B×N×C (or B×N), order: B×N indices → x reordered along N."""
    return x.gather(1, order if x.ndim == 2 else order.unsqueeze(-1).expand_as(x))


class EvolvingGlobalBlock(GlobalBlock):
    """Global block with a class token and Evo-ViT token evolution.

    forward(cls, x, score) → (cls, x, score); `score` is B×N (None before the first block of
    stage 3, which initialises it). `downsample_score` average-pools the score map 2× in space
    for the next stage and rescales it to keep its sum.
    """

    def __init__(self, dim: int, ndim: int = 2, head_dim: int = 32, mlp_ratio: float = 3.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, prune_ratio: float = 1.0,
                 trade_off: float = 0.5, downsample_score: bool = False, layer_scale: float | None = None):
        super().__init__(dim, ndim, head_dim, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, layer_scale)
        self.ndim = ndim
        self.prune_ratio = prune_ratio
        self.trade_off = trade_off
        self.downsample_score = downsample_score

    def _attend(self, seq: torch.Tensor):
        """Attention + MLP on [cls, tokens..]; returns the new sequence, the class attention, and
        the scaled update received by the last token (the representative)."""
        a, cls_attn = self.attn(self.norm1(seq), cls_attention=True)
        a = scaled(a, self.gamma_1)
        seq = seq + self.drop_path(a)
        m = scaled(self.mlp(self.norm2(seq)), self.gamma_2)
        seq = seq + self.drop_path(m)
        return seq, cls_attn, a[:, -1:] + m[:, -1:]

    def _mix(self, score: torch.Tensor | None, cls_attn: torch.Tensor) -> torch.Tensor:
        if score is None:
            return cls_attn
        return (1 - self.trade_off) * score + self.trade_off * cls_attn

    def forward(self, cls: torch.Tensor, x: torch.Tensor, score: torch.Tensor | None):
        x = self.pos_embed(x)
        shape = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # B × N × C
        N = tokens.shape[1]
        if score is not None and score.shape[1] != N:
            raise ValueError(f"token score covers {score.shape[1]} tokens, the map has {N}")
        if self.prune_ratio == 1:
            seq, cls_attn, _ = self._attend(torch.cat([cls, tokens], 1))
            score = self._mix(score, cls_attn[:, 1:])
            cls, tokens = seq[:, :1], seq[:, 1:]
        else:
            if score is None:
                raise ValueError("a pruning block needs a token score: the first block of stage 3 must keep all tokens")
            keep = int(N * self.prune_ratio)
            order = torch.argsort(score, dim=1, descending=True)
            tokens, score = _gather_tokens(tokens, order), _gather_tokens(score, order)
            kept, dropped = tokens[:, :keep], tokens[:, keep:]
            weight = score[:, keep:] / score[:, keep:].sum(1, keepdim=True)
            representative = (weight.unsqueeze(-1) * dropped).sum(1, keepdim=True)
            seq, cls_attn, update = self._attend(torch.cat([cls, kept, representative], 1))
            score = torch.cat([self._mix(score[:, :keep], cls_attn[:, 1:-1]), score[:, keep:]], 1)
            cls = seq[:, :1]
            tokens = torch.cat([seq[:, 1:-1], dropped + update], 1)
            inverse = torch.argsort(order, dim=1)
            tokens, score = _gather_tokens(tokens, inverse), _gather_tokens(score, inverse)
        x = tokens.transpose(1, 2).reshape(shape)
        if self.downsample_score:
            total = score.sum(1, keepdim=True)
            grid = score.reshape(shape[0], 1, *shape[2:])
            pooled = F.avg_pool2d(grid, 2) if self.ndim == 2 else F.avg_pool3d(grid, (1, 2, 2))
            score = pooled.flatten(1)
            score = score * (total / score.sum(1, keepdim=True))
        return cls, x, score


class UniFormerLight(_ModelApi):
    """UniFormer-XS / XXS for images (B×C×H×W) or videos (B×C×T×H×W, `video=True`).

    `prune_ratios` / `trade_offs` give one value per block of stages 3 and 4.
    `layer_scale` (an initial value) scales every block's branches, as in the released
    layer-scaled 4- and 8-frame video XXS checkpoints (init 0.1 there).
    Eval: logits of the pooled map. Training: (those logits, class-token logits).
    """

    classifiers = ("head", "head_cls")
    stem_pattern = r"^patch_embed1|^cls_token"
    no_decay = frozenset({"cls_token"})

    def __init__(
        self,
        depths: Sequence[int] = (3, 5, 9, 3),
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        head_dim: int = 32,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = True,
        num_classes: int = 1000,
        in_chans: int = 3,
        video: bool = False,
        prune_ratios: tuple[Sequence[float], Sequence[float]] | None = None,
        trade_offs: tuple[Sequence[float], Sequence[float]] | None = None,
        layer_scale: float | bool | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__(num_classes, global_pool, video, embed_dims)
        layer_scale = layer_scale_init(layer_scale, 0.1)
        ndim = 3 if video else 2
        d3, d4 = depths[2], depths[3]
        prune_ratios = prune_ratios or ([1.0] + [0.5] * (d3 - 1), [0.5] * d4)
        trade_offs = trade_offs or ([1.0] + [0.5] * (d3 - 1), [0.5] * d4)
        if [len(v) for v in (*prune_ratios, *trade_offs)] != [d3, d4, d3, d4]:
            raise ValueError("prune_ratios and trade_offs need one value per block of stages 3 and 4")

        self._add_embeddings(ConvEmbed(in_chans, embed_dims[0], ndim, stem=True), embed_dims, ndim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[2]))
        self.cls_upsample = nn.Linear(embed_dims[2], embed_dims[3])
        self.pos_drop = nn.Dropout(drop_rate)

        rates = drop_path_rates(depths, drop_path_rate)
        self._add_local_stages(embed_dims, ndim, mlp_ratio, drop_rate, rates, layer_scale)
        for s in (2, 3):
            self.add_module(f"blocks{s + 1}", nn.ModuleList(
                EvolvingGlobalBlock(
                    embed_dims[s], ndim, head_dim, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate,
                    prune_ratios[s - 2][i], trade_offs[s - 2][i],
                    downsample_score=(s == 2 and i == depths[2] - 1), layer_scale=layer_scale)
                for i, rate in enumerate(rates[s])))
        self.norm = BATCH_NORM_ND[ndim](embed_dims[-1])
        self.norm_cls = nn.LayerNorm(embed_dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = classifier(embed_dims[-1], num_classes)
        self.head_cls = classifier(embed_dims[-1], num_classes)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (class token B×1×C, final map after the BatchNorm)."""
        x = self.pos_drop(self.patch_embed1(to_memory_format(x, self.channels_last)))
        x = self._run_stage(self.blocks1, x)
        x = self._run_stage(self.blocks2, self.patch_embed2(x))
        x = self.patch_embed3(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        score = None
        for blk in self.blocks3:
            cls, x, score = self._block(blk, cls, x, score)
        cls = self.cls_upsample(cls)
        x = self.patch_embed4(x)
        for blk in self.blocks4:  # the pooled score carries over from stage 3
            cls, x, score = self._block(blk, cls, x, score)
        return cls, self.norm(x)

    def forward(self, x: torch.Tensor):
        cls, x = self.forward_features(x)
        logits = self.forward_head(x)
        if self.training and self.global_pool:
            return logits, self.head_cls(self.norm_cls(cls).squeeze(1))
        return logits


default_cfgs = generate_default_cfgs(pretrained_cfgs(LIGHT_MODEL_ARGS))
register_variants(UniFormerLight, LIGHT_MODEL_ARGS, __name__)
