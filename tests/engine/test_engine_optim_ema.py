"""AdamW parameter groups, the learning-rate schedules, the EMA update, and the AMP guard."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from uniformer.engine.ema import ModelEma
from uniformer.engine.optim import LRSchedule, build_optimizer, param_groups, scaled_lr
from uniformer.engine.runner import resolve_amp


def test_no_weight_decay_on_1d_parameters_and_biases():
    import uniformer

    model = uniformer.create_model("uniformer_video_small", num_classes=5, depths=(1, 1, 1, 1),
                                   embed_dims=(16, 32, 64, 128), head_dim=16)
    groups = {g["name"]: g for g in param_groups(model, 0.05)}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in groups["decay"]["params"])
    assert all(p.ndim <= 1 for p in groups["no_decay"]["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert "head.weight" in {names[id(p)] for p in groups["decay"]["params"]}
    assert {"head.bias", "norm.weight"} <= {names[id(p)] for p in groups["no_decay"]["params"]}
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    opt = build_optimizer(model, 1e-3, 0.05)
    assert isinstance(opt, torch.optim.AdamW) and [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_linear_lr_scaling():
    assert scaled_lr(1e-4, 128, 64) == pytest.approx(2e-4)
    assert scaled_lr(1e-3, 7, None) == 1e-3


def test_warmup_then_cosine_per_step():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2, 2))], lr=1.0)
    s = LRSchedule(opt, peak_lr=1e-2, total_steps=110, warmup_steps=10, warmup_lr=1e-4, min_lr=1e-5)
    lrs = [s.step() for _ in range(110)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[5] == pytest.approx(1e-4 + (1e-2 - 1e-4) * 0.5)
    assert lrs[10] == pytest.approx(1e-2)
    assert lrs[60] == pytest.approx(1e-5 + 0.5 * (1e-2 - 1e-5) * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] == pytest.approx(1e-5 + 0.5 * (1e-2 - 1e-5) * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert opt.param_groups[0]["lr"] == lrs[-1]
    again = LRSchedule(opt, 1e-2, 110, warmup_steps=10, warmup_lr=1e-4, min_lr=1e-5)
    again.load_state_dict({"last_step": 60})
    assert again.step() == pytest.approx(lrs[60])


def test_poly_and_step_schedules_with_an_mmcv_warmup():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1.0)
    poly = LRSchedule(opt, 1.0, 100, kind="poly", warmup_steps=10, warmup_ratio=1e-6, min_lr=0.0)
    assert poly.lr_at(0) == pytest.approx(1e-6) and poly.lr_at(50) == pytest.approx(0.5)
    assert poly.lr_at(100) == pytest.approx(0.0)
    step = LRSchedule(opt, 1e-4, 36, kind="step", milestones=[24, 33], gamma=0.1)
    assert [step.lr_at(i) for i in (0, 23, 24, 33)] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-6])
    assert LRSchedule(opt, 2.0, 10, kind="constant").lr_at(7) == 2.0


def test_no_decay_keys_and_no_weight_decay_names():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3)
            self.norm = nn.GroupNorm(1, 2)
            self.pos = nn.Parameter(torch.zeros(1, 4, 4))

        def no_weight_decay(self):
            return {"pos"}

    net = Net()
    groups = param_groups(net, 0.1, no_decay_1d=False, no_decay_keys=["norm"])
    decay = {id(p) for g in groups if g["name"] == "decay" for p in g["params"]}
    # biases, names containing "norm" and no_weight_decay() names are exempt; 1-D parameters decay here
    assert {n for n, p in net.named_parameters() if id(p) in decay} == {"conv.weight"}


def test_ema_is_the_moving_average_and_copies_integer_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 7
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, 0.9 * w0 + 0.1 * (w0 + 1.0))
    assert int(ema.module[1].num_batches_tracked) == 7
    assert not any(p.requires_grad for p in ema.module.parameters())
    restored = ModelEma(model, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and torch.equal(restored.module[0].weight, ema.module[0].weight)
    warm = ModelEma(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)


def test_amp_resolution(monkeypatch):
    """auto follows the CPU's bfloat16 capability (pinned both ways through UNIFORMER_CPU_BF16)."""
    cpu = torch.device("cpu")
    monkeypatch.setenv("UNIFORMER_CPU_BF16", "0")
    assert resolve_amp("auto", cpu) == "none"
    monkeypatch.setenv("UNIFORMER_CPU_BF16", "1")
    assert resolve_amp("auto", cpu) == "bf16"
    assert resolve_amp("none", cpu) == "none"
    assert resolve_amp("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16.*needs a GPU"):
        resolve_amp("fp16", cpu)
