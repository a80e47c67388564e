"""Shared fixtures of the model tests: tiny configurations, seeded construction, full-size summaries."""
from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

import uniformer

# Widths divisible by head_dim 16; one block in the cheap stages, two in stage 3.
TINY = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), head_dim=16, num_classes=10)
TINY_LIGHT = dict(depths=(1, 1, 3, 2), embed_dims=(16, 32, 64, 128), head_dim=16, num_classes=10)

@pytest.fixture
def tiny_kwargs() -> dict:
    return dict(TINY)


@pytest.fixture
def tiny_light_kwargs() -> dict:
    return dict(TINY_LIGHT)


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm non-trivial affine parameters and running statistics (so that a test
    notices when they are lost or mixed up)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


@pytest.fixture
def randomize_norms():
    return _randomize_norms


@pytest.fixture
def make_tiny():
    """make_tiny(name="uniformer_small", seed=0, **overrides) → a seeded tiny model in eval mode."""

    def make(name: str = "uniformer_small", seed: int = 0, **overrides) -> nn.Module:
        base = TINY_LIGHT if name in ("uniformer_xxs", "uniformer_xs", "uniformer_video_xxs", "uniformer_video_xs") \
            else TINY
        torch.manual_seed(seed)
        model = uniformer.create_model(name, **{**base, **overrides})
        return _randomize_norms(model, seed).eval()

    return make


class FullSummary:
    """Parameter count and shape-only (meta) state dict of a full-size model, built once per session.

    Built on the meta device: no memory, no initialisation, so all twelve variants cost a couple of
    seconds. The drop-path schedule is computed with `torch.linspace(...).tolist()`, which needs real
    data, so that one call is sent to the CPU.
    """

    def __init__(self):
        self._cache: dict = {}

    def __call__(self, name: str, **kwargs) -> tuple[int, dict[str, torch.Tensor]]:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in self._cache:
            linspace = torch.linspace

            def cpu_linspace(*args, **kw):
                return linspace(*args, **{**kw, "device": "cpu"})

            with torch.device("meta"), mock.patch.object(torch, "linspace", cpu_linspace):
                model = uniformer.create_model(name, **kwargs)
            count = sum(p.numel() for p in model.parameters())
            self._cache[key] = (count, dict(model.state_dict()))
        return self._cache[key]


@pytest.fixture(scope="session")
def full_summary() -> FullSummary:
    return FullSummary()


def materialize(shapes: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Real tensors (seeded, small values) with the shapes of a meta state dict."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in shapes.items():
        if v.dtype == torch.int64:
            out[k] = torch.zeros(v.shape, dtype=torch.int64)
        else:
            out[k] = 0.02 * torch.randn(v.shape, generator=g)
    return out


@pytest.fixture
def materialize_state_dict():
    return materialize
