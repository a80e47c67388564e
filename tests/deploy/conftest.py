"""Deployment tests: tiny seeded models (norms randomised so folded weights matter), one thread."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import uniformer

TINY = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), head_dim=16, num_classes=10)
TINY_LIGHT = dict(depths=(1, 1, 2, 2), embed_dims=(16, 32, 64, 128), head_dim=16, num_classes=10)


@pytest.fixture
def make_tiny():
    """make_tiny(name="uniformer_small", **overrides) → a seeded tiny model in eval mode."""

    def make(name: str = "uniformer_small", **overrides) -> nn.Module:
        torch.manual_seed(0)
        model = uniformer.create_model(name, **{**(TINY_LIGHT if "xs" in name else TINY), **overrides})
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        return model.eval()

    return make
