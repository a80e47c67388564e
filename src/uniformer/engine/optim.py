"""Optimiser and learning-rate schedule of the UniFormer recipes.

AdamW with two parameter groups: weight decay on weight matrices and kernels, none on 1-D
parameters (norm scales and shifts, biases, layer-scale vectors, position scalars) nor on the names
a model lists in `no_weight_decay()`. The schedule is per optimiser step: linear warm-up from
`warmup_lr` to the peak, then half a cosine down to `min_lr` (or constant), as in the original
SlowFast / DeiT training code. The peak may be scaled linearly with the effective batch.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "scaled_lr", "WarmupCosineSchedule"]


def param_groups(model: nn.Module, weight_decay: float, no_decay_1d: bool = True,
                 extra_no_decay: Iterable[str] = ()) -> list[dict]:
    """Split trainable parameters into a decayed group and a group with weight decay 0."""
    skip = set(extra_no_decay)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in skip or name.endswith(".bias") or (no_decay_1d and p.ndim <= 1):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "name": "decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def scaled_lr(lr: float, effective_batch: int, lr_base_batch: float | None) -> float:
    """Linear scaling rule: `lr` is quoted for `lr_base_batch` clips per optimiser step (None: no scaling)."""
    return lr if not lr_base_batch else lr * effective_batch / lr_base_batch


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                    no_decay_1d: bool = True) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, no_decay_1d)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


class WarmupCosineSchedule:
    """Per-step learning rate: linear warm-up, then cosine decay (or constant) to `min_lr`.

    Call `step()` once before every optimiser step; it writes the rate into each group
    (times the group's optional `lr_scale`) and advances. `state_dict()` is just the step count.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int, warmup_steps: int = 0,
                 warmup_lr: float = 1e-6, min_lr: float = 1e-6, kind: str = "cosine"):
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps}: the schedule needs at least one step")
        if kind not in ("cosine", "constant"):
            raise ValueError(f"schedule kind {kind!r}: expected 'cosine' or 'constant'")
        self.optimizer = optimizer
        self.peak_lr, self.total_steps = float(peak_lr), int(total_steps)
        self.warmup_steps = min(int(warmup_steps), self.total_steps)
        self.warmup_lr, self.min_lr, self.kind = float(warmup_lr), float(min_lr), kind
        self.last_step = 0
        self._apply(self.lr_at(0))

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.peak_lr - self.warmup_lr) * step / self.warmup_steps
        if self.kind == "constant":
            return self.peak_lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def _apply(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> float:
        """Set the rate for the coming optimiser step and advance; returns that rate."""
        lr = self.lr_at(self.last_step)
        self._apply(lr)
        self.last_step += 1
        return lr

    @property
    def current_lr(self) -> float:
        return self.lr_at(max(0, self.last_step - 1))

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "peak_lr": self.peak_lr}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self._apply(self.lr_at(max(0, self.last_step - 1)))
