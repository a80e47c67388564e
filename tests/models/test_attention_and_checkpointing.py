"""Fused vs explicit attention, and gradient checkpointing (same outputs, same gradients)."""
from __future__ import annotations

import copy

import pytest
import torch

import uniformer.models.uniformer as uniformer_module
from uniformer.models import GlobalMHRA


# --- fused vs explicit attention ---------------------------------------------------------------
@pytest.mark.parametrize("dim, head_dim, n", [(64, 16, 17), (48, 24, 50), (32, 32, 5)])
def test_fused_and_explicit_attention_agree(dim, head_dim, n):
    torch.manual_seed(0)
    attn = GlobalMHRA(dim, head_dim).eval()
    x = torch.randn(2, n, dim)
    with torch.no_grad():
        attn.fused_attn = True
        fused, fused_cls = attn(x, cls_attention=True)
        plain_fused = attn(x)
        attn.fused_attn = False
        explicit, explicit_cls = attn(x, cls_attention=True)
        plain_explicit = attn(x)
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert torch.allclose(plain_fused, plain_explicit, atol=1e-5)
    assert torch.allclose(fused, plain_fused, atol=1e-6)
    assert fused_cls.shape == (2, n)
    assert torch.allclose(fused_cls, explicit_cls, atol=1e-6)
    assert torch.allclose(fused_cls.sum(-1), torch.ones(2), atol=1e-5)


def test_class_attention_is_the_head_mean_of_row_zero():
    torch.manual_seed(0)
    attn = GlobalMHRA(32, 8).eval()
    x = torch.randn(1, 9, 32)
    with torch.no_grad():
        _, cls_attn = attn(x, cls_attention=True)
        q, k, _ = attn.qkv(x).view(1, 9, 3, 4, 8).permute(2, 0, 3, 1, 4)
        rows = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / 8 ** 0.5, -1)  # 1 × heads × 1 × 9
    expected = rows[:, :, 0].mean(1)
    assert torch.allclose(cls_attn, expected, atol=1e-6)


def test_head_dim_must_divide_width():
    with pytest.raises(ValueError, match="head_dim"):
        GlobalMHRA(48, 32)


@pytest.mark.parametrize("name", ["uniformer_small", "uniformer_xxs"])
def test_whole_model_fused_vs_explicit(make_tiny, name):
    model = make_tiny(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = model(x)
        for m in model.modules():
            if isinstance(m, GlobalMHRA):
                m.fused_attn = False
        explicit = model(x)
    assert torch.allclose(fused, explicit, atol=1e-5)


# --- gradient checkpointing --------------------------------------------------------------------
def _count_checkpoint_calls(monkeypatch, module) -> list:
    calls = []
    real = module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "checkpoint", counting)
    return calls


def _grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_uniformer(make_tiny, monkeypatch):
    calls = _count_checkpoint_calls(monkeypatch, uniformer_module)
    ref = make_tiny(aux_head=True).train()
    ckpt = copy.deepcopy(ref)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    target = torch.randn(2, 10)

    out_ref = ref(x)
    ((out_ref - target) ** 2).sum().backward()
    grad_x_ref = x.grad.clone()
    x.grad = None
    out_ckpt = ckpt(x)
    ((out_ckpt - target) ** 2).sum().backward()

    assert len(calls) == 5  # one per block
    assert torch.allclose(out_ref, out_ckpt, atol=1e-6)
    assert torch.allclose(x.grad, grad_x_ref, atol=1e-5)
    g_ref, g_ckpt = _grads(ref), _grads(ckpt)
    assert g_ref.keys() == g_ckpt.keys() and len(g_ref) == len(list(ref.parameters()))
    for k in g_ref:
        assert torch.allclose(g_ref[k], g_ckpt[k], atol=1e-5, rtol=1e-4), k


def test_grad_checkpointing_is_off_without_grad(make_tiny, monkeypatch):
    calls = _count_checkpoint_calls(monkeypatch, uniformer_module)
    model = make_tiny()
    model.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    model.set_grad_checkpointing(False)
    with torch.no_grad():
        assert torch.allclose(y, model(x))
    assert calls == []


def test_grad_checkpointing_light(make_tiny, monkeypatch):
    calls = _count_checkpoint_calls(monkeypatch, uniformer_module)  # the shared _ModelApi calls it
    ref = make_tiny("uniformer_xxs", drop_path_rate=0.0).train()
    ckpt = copy.deepcopy(ref)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)

    logits, cls_logits = ref(x)
    (logits.square().sum() + 0.5 * cls_logits.square().sum()).backward()
    out = ckpt(x)
    assert isinstance(out, tuple) and len(out) == 2
    (out[0].square().sum() + 0.5 * out[1].square().sum()).backward()

    assert len(calls) == 7  # depths (1, 1, 3, 2)
    assert torch.allclose(out[0], logits, atol=1e-6)
    assert torch.allclose(out[1], cls_logits, atol=1e-6)
    g_ref, g_ckpt = _grads(ref), _grads(ckpt)
    assert g_ref.keys() == g_ckpt.keys()
    assert "cls_token" in g_ref and "blocks4.1.attn.qkv.weight" in g_ref
    for k in g_ref:
        assert torch.allclose(g_ref[k], g_ckpt[k], atol=1e-5, rtol=1e-4), k
