"""uniformer: UniFormer backbones for image and video classification and dense prediction.

    import uniformer
    model = uniformer.create_model("uniformer_small", checkpoint_path="uniformer_small_in1k.pth")
"""
from __future__ import annotations

import os

import timm
from torch import nn

from . import models  # noqa: F401  (registers the variants with timm)
from .deploy.optimize import optimize
from .models import CheckpointError, fuse, identify_variant, load_checkpoint

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "fuse", "optimize", "load_checkpoint", "identify_variant", "CheckpointError"]


def list_models(pattern: str = "uniformer*", pretrained: bool = False) -> list[str]:
    """Registered UniFormer variants (with `pretrained=True`: the name.tag weights that exist)."""
    return timm.list_models(pattern, pretrained=pretrained)


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None,
                 inflate: str = "average", **kwargs) -> nn.Module:
    """Build a UniFormer variant; optionally load released weights or any original checkpoint.

    Args:
        name: a registered variant, optionally with a weight tag ("uniformer_video_small.k400_16x8").
        pretrained: fetch the released weights (Hugging Face hub), or `pretrained_cfg_overlay=dict(file=...)`.
        inflate: how 2-D kernels become 3-D for a video model ("average" over time, or "center" frame only).
    """
    if name.split(".")[0] not in list_models():
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    model = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained:
        from .models.checkpoint import load_pretrained

        load_pretrained(model, inflate)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, inflate)
    return model
