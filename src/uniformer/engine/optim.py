"""AdamW parameter groups and the per-step learning-rate schedule, shared by every task.

No weight decay on what the model's `no_weight_decay()` lists, biases, 1-D parameters (`no_decay_1d`) and
names containing one of `no_decay_keys` (mmcv's `paramwise_cfg custom_keys ... decay_mult=0`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, no_decay_1d: bool = True,
                 no_decay_keys: Iterable[str] = ()) -> list[dict]:
    """Split trainable parameters into a decayed group and a group with weight decay 0."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    keys = tuple(no_decay_keys)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in skip or name.endswith(".bias") or (no_decay_1d and p.ndim <= 1) or any(k in name for k in keys):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def scaled_lr(lr: float, global_batch: int, lr_base_batch: float | None) -> float:
    """Linear scaling rule: `lr` is quoted for `lr_base_batch` samples per optimiser step (None: no scaling)."""
    return lr if not lr_base_batch else lr * global_batch / lr_base_batch


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                    no_decay_1d: bool = True, no_decay_keys: Iterable[str] = ()) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, no_decay_1d, no_decay_keys)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


class LRSchedule:
    """Per-step learning rate (cosine | poly | step | constant); call `step()` before every optimiser step.
    The linear warm-up starts at `warmup_lr`, or at `warmup_ratio` x the scheduled rate (mmcv's warm-up)."""

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int, *, kind: str = "cosine",
                 warmup_steps: int = 0, warmup_lr: float = 1e-6, warmup_ratio: float | None = None,
                 min_lr: float = 0.0, power: float = 1.0, milestones: Sequence[int] = (), gamma: float = 0.1):
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps}: the schedule needs at least one step")
        if kind not in ("cosine", "poly", "step", "constant"):
            raise ValueError(f"schedule kind {kind!r}: expected cosine, poly, step or constant")
        self.optimizer, self.kind = optimizer, kind
        self.peak_lr, self.total_steps = float(peak_lr), int(total_steps)
        self.warmup_steps = min(int(warmup_steps), self.total_steps)
        self.warmup_lr, self.warmup_ratio = float(warmup_lr), warmup_ratio
        self.min_lr, self.power = float(min_lr), float(power)
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)
        self.last_step = 0
        self._apply(self.lr_at(0))

    def _scheduled(self, step: int) -> float:
        if self.kind == "constant":
            return self.peak_lr
        if self.kind == "step":
            lr = self.peak_lr * self.gamma ** sum(step >= m for m in self.milestones)
            return max(lr, self.min_lr) if self.min_lr else lr
        if self.kind == "poly":
            progress = min(1.0, step / self.total_steps)
            return (self.peak_lr - self.min_lr) * (1.0 - progress) ** self.power + self.min_lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0, step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def lr_at(self, step: int) -> float:
        lr = self._scheduled(step)
        if step < self.warmup_steps:
            start = self.warmup_ratio * lr if self.warmup_ratio is not None else self.warmup_lr
            lr = start + (lr - start) * step / self.warmup_steps
        return lr

    def _apply(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> float:
        """Set the rate for the coming optimiser step and advance; returns that rate."""
        lr = self.lr_at(self.last_step)
        self._apply(lr)
        self.last_step += 1
        return lr

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "peak_lr": self.peak_lr}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self._apply(self.lr_at(max(0, self.last_step - 1)))
