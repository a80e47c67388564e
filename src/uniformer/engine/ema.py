"""Exponential moving average of model weights (as in the DeiT / UniFormer ImageNet recipe).

Floating-point parameters and buffers are averaged, integer buffers copied. With `warmup` the decay ramps as
min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the random initialisation.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """A frozen copy of `model` (`.module`) that tracks the moving average of its weights."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay}: expected a number in (0, 1)")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay, self.warmup = float(decay), bool(warmup)
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        mine = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = mine[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.detach().to(target.dtype), 1.0 - decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state.get("updates", 0))
