"""UniFormer: convolution (local MHRA) in shallow stages, self-attention (global MHRA) in deep ones.

Li et al., "UniFormer: Unifying Convolution and Self-attention for Visual Recognition" (TPAMI 2023,
arXiv 2201.09450) and "UniFormer: Unified Transformer for Efficient Spatiotemporal Representation Learning"
(ICLR 2022, arXiv 2201.04676).

One class covers image and video models (`video=True` swaps every 2-D op for its 3-D twin) and the
dense-prediction backbones (`features_only=True`: four LayerNorm-ed stage maps, stage 3 attending globally,
in windows, or both); the light XS/XXS models live in `uniformer_light.py`. Forward: patch_embed1, blocks1
(LocalBlock), patch_embed2, blocks2 (LocalBlock), ..., blocks4 (GlobalBlock), BatchNorm `norm`, mean, `head`.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models import FeatureInfo, build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from .checkpoint import checkpoint_filter_fn, load_pretrained
from .layers import BATCH_NORM_ND, ConvEmbed, GlobalBlock, LocalBlock, PatchEmbed, channels_last_norm, to_memory_format
from .released import RELEASED_WEIGHTS, timm_pretrained_cfg
from .variants import MODEL_ARGS

__all__ = ["UniFormer"]

STAGE3_MODES = ("global", "window", "hybrid")


def classifier(dim: int, num_classes: int, device=None) -> nn.Module:
    return nn.Linear(dim, num_classes, device=device) if num_classes > 0 else nn.Identity()


def layer_scale_init(value: float | bool | None, default: float) -> float | None:
    """`True` means the released initial value `default`, `False` none."""
    return default if value is True else None if value is False else value


def drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Stochastic depth growing linearly over all blocks, split by stage."""
    n = sum(depths)
    rates = [rate * i / max(n - 1, 1) for i in range(n)]
    return [rates[sum(depths[:s]):sum(depths[:s + 1])] for s in range(len(depths))]


class _ModelApi(nn.Module):
    """What UniFormer and UniFormerLight share: the embeddings, the local stages, the pooled head, timm's API."""

    classifiers: tuple[str, ...]  # the names of the Linear heads on `num_features`
    stem_pattern: str  # group_matcher's stem
    no_decay: frozenset[str] = frozenset()  # no_weight_decay's parameters

    def __init__(self, num_classes: int, global_pool: str, video: bool, embed_dims: Sequence[int]):
        super().__init__()
        self.video = video
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False
        self.channels_last = False  # run on channels-last maps (set by uniformer.fuse; faster on CPU)

    def _add_embeddings(self, first: nn.Module, embed_dims: Sequence[int], ndim: int,
                        conv_downsample: bool = False) -> None:
        self.patch_embed1 = first
        for i in (1, 2, 3):
            if conv_downsample:
                embed = ConvEmbed(embed_dims[i - 1], embed_dims[i], ndim)
            else:
                embed = PatchEmbed(embed_dims[i - 1], embed_dims[i], 2, ndim)
            setattr(self, f"patch_embed{i + 1}", embed)

    def _add_local_stages(self, embed_dims: Sequence[int], ndim: int, mlp_ratio: float, drop_rate: float,
                          rates: list[list[float]], layer_scale: float | None) -> None:
        for s in (0, 1):
            self.add_module(f"blocks{s + 1}", nn.ModuleList(
                LocalBlock(embed_dims[s], ndim, mlp_ratio, drop_rate, rate, layer_scale) for rate in rates[s]))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set(self.no_decay)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=self.stem_pattern, blocks=r"^blocks(\d+)\.(\d+)" if not coarse else r"^blocks(\d+)")

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        for name in self.classifiers:
            if getattr(self, name) is not None:
                setattr(self, name, classifier(self.num_features, num_classes, self.norm.weight.device))

    def _block(self, blk: nn.Module, *args):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, *args, use_reentrant=False)
        return blk(*args)

    def _run_stage(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            x = self._block(blk, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.global_pool:
            return x
        tokens = x.flatten(2)  # B × C × positions
        pooled = self.head_drop(tokens.mean(-1))
        if pre_logits:
            return pooled
        logits = self.head(pooled)
        if getattr(self, "aux_head", None) is not None:
            logits = logits + 0.5 * self.aux_head(tokens.transpose(1, 2)).amax(1)
        return logits


class UniFormer(_ModelApi):
    """UniFormer for images (B×C×H×W) or videos (B×C×T×H×W).

    Args:
        video: 3-D convolutions and the video embeddings (time halved by the first one).
        stem: "patch" (4×4 conv + LayerNorm) or "conv" (two 3×3 stride-2 convs, S+).
        downsample: "patch" (2×2 conv + LayerNorm) or "conv" (3×3 stride-2 conv + BN, S+).
        layer_scale: initial value of per-channel scales on the global blocks (`*_ls` models; True: 1e-6).
        local_layer_scale: the same on the local blocks (UniFormer-L's token-labeling code has both).
        aux_head: token-labeling head; logits = head(mean token) + 0.5 · max over tokens of aux_head.
        features_only: return the stage maps `out_indices`, each through its own LayerNorm (`norm1`..`norm4`).
        stage3: "global", "window" or "hybrid" (every fourth block global, the others in windows of
            `window_size`) attention in stage 3.
    """

    classifiers = ("head", "aux_head")
    stem_pattern = r"^patch_embed1"

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 8, 3),
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_classes: int = 1000,
        in_chans: int = 3,
        video: bool = False,
        stem: str = "patch",
        downsample: str = "patch",
        layer_scale: float | None = None,
        local_layer_scale: float | None = None,
        aux_head: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        stage3: str = "global",
        window_size: int = 14,
    ):
        if stage3 not in STAGE3_MODES:
            raise ValueError(f"stage3={stage3!r}: expected one of {STAGE3_MODES}")
        if stage3 != "global" and video:
            raise ValueError("stage3 window/hybrid attention is for 2-D dense backbones, not video models")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r}: expected 'avg' or ''")
        ndim = 3 if video else 2
        super().__init__(num_classes, global_pool, video, embed_dims)
        layer_scale = layer_scale_init(layer_scale, 1e-6)
        self.embed_dims = tuple(embed_dims)
        self.features_only = features_only
        self.out_indices = tuple(out_indices)

        if stem == "conv":
            first = ConvEmbed(in_chans, embed_dims[0], ndim, stem=True)
        else:
            first = PatchEmbed(in_chans, embed_dims[0], 4, ndim, temporal_stride=2 if video else 1)
        self._add_embeddings(first, embed_dims, ndim, conv_downsample=downsample == "conv")
        self.pos_drop = nn.Dropout(drop_rate)

        rates = drop_path_rates(depths, drop_path_rate)
        self._add_local_stages(embed_dims, ndim, mlp_ratio, drop_rate, rates, local_layer_scale)
        for s in (2, 3):
            windowed = [s == 2 and (stage3 == "window" or (stage3 == "hybrid" and (i + 1) % 4 != 0))
                        for i in range(depths[s])]
            self.add_module(f"blocks{s + 1}", nn.ModuleList(
                GlobalBlock(embed_dims[s], ndim, head_dim, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate,
                            layer_scale, window_size if window else None) for rate, window in zip(rates[s], windowed)))

        if features_only:
            for i in range(4):
                self.add_module(f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=1e-6))
            self.feature_info = FeatureInfo(
                [dict(num_chs=dim, reduction=4 * 2 ** i, module=f"norm{i + 1}") for i, dim in enumerate(embed_dims)],
                self.out_indices)
        else:
            self.norm = BATCH_NORM_ND[ndim](embed_dims[-1])
            self.head_drop = nn.Dropout(drop_rate)
            self.head = classifier(embed_dims[-1], num_classes)
            self.aux_head = classifier(embed_dims[-1], num_classes) if aux_head else None
        self.apply(init_weights)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if self.features_only:
            raise RuntimeError("a features_only backbone has no classifier")
        super().reset_classifier(num_classes, global_pool)

    def _stage_maps(self, x: torch.Tensor, stages: int = 4):
        """Yield the output of each of the first `stages` stages (before any final norm)."""
        x = self.pos_drop(self.patch_embed1(to_memory_format(x, self.channels_last)))
        for i in range(1, stages + 1):
            if i > 1:
                x = getattr(self, f"patch_embed{i}")(x)
            x = self._run_stage(getattr(self, f"blocks{i}"), x)
            yield x

    def forward_features(self, x: torch.Tensor):
        """Classification: the last map after the BatchNorm. Dense backbones: the list of stage maps."""
        if self.features_only:
            maps = self._stage_maps(x, max(self.out_indices) + 1)
            return [channels_last_norm(getattr(self, f"norm{i + 1}"), y).contiguous()
                    for i, y in enumerate(maps) if i in self.out_indices]
        *_, x = self._stage_maps(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor):
        x = self.forward_features(x)
        return x if self.features_only else self.forward_head(x)


def init_weights(m: nn.Module) -> None:
    """The original's initialisation (used with `Module.apply`): truncated-normal Linear weights, zero biases.
    (Its LayerNorm reset to ones and zeros is what a new LayerNorm holds already.)"""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# --- variants ---------------------------------------------------------------------------------


_CFG = dict(num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic",
            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), first_conv="patch_embed1.proj", classifier="head",
            paper_ids="arXiv:2201.09450", origin_url="https://github.com/Sense-X/UniFormer", license="mit")


def pretrained_cfgs(variants) -> dict:
    """timm's configs of `variants`: one per released `name.tag`, and an untagged one without weights for the rest."""
    cfgs = {name: timm_pretrained_cfg(w, **_CFG) for name, w in RELEASED_WEIGHTS.items()
            if name.split(".")[0] in variants}
    for variant in variants:
        if not any(name.split(".")[0] == variant for name in cfgs):
            cfgs[variant] = {**_CFG, "num_classes": 400 if "video" in variant else 1000}
    return cfgs


def register_variants(cls: type[nn.Module], args: dict[str, dict], module: str) -> None:
    """Register a timm entry point `name(pretrained=False, **kwargs)` building `cls` from `args[name]` per
    entry of `args`, as an attribute of `module` (whose `default_cfgs` timm reads, so it is assigned first)."""

    def entry_point(variant: str):
        def entry(pretrained: bool = False, **kwargs):
            kwargs = {**args[variant], **kwargs}
            # The backbone returns its stage maps itself (with their LayerNorms), so timm's feature
            # wrapper is bypassed: build_model_with_cfg would otherwise pop `features_only`.
            features_only = kwargs.pop("features_only", False)
            kwargs.pop("feature_cls", None)
            if features_only and cls is not UniFormer:
                raise ValueError(f"{variant}: features_only backbones exist for the standard models, "
                                 "not the light ones")
            model = build_model_with_cfg(partial(cls, features_only=True) if features_only else cls, variant,
                                         pretrained=False, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
            if pretrained:
                load_pretrained(model)
            return model

        entry.__name__ = entry.__qualname__ = variant
        entry.__doc__ = f"{cls.__name__} {variant} ({args[variant]}; see variants.py)."
        entry.__module__ = module
        return register_model(entry)

    for variant in args:
        setattr(sys.modules[module], variant, entry_point(variant))


default_cfgs = generate_default_cfgs(pretrained_cfgs(MODEL_ARGS))
register_variants(UniFormer, MODEL_ARGS, __name__)
