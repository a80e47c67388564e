"""`dense`: oneDNN products in CPU inference, `F.linear` wherever autograd, tracing or other devices need it."""
from __future__ import annotations

import torch

from uniformer.models.layers import dense


def test_dense_matches_linear_and_keeps_gradients():
    """oneDNN serves inference; with gradients needed it falls back to F.linear, so training works."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 16)
    weight, bias = torch.randn(24, 16, requires_grad=True), torch.randn(24, requires_grad=True)
    expected = torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias))
    with torch.no_grad():
        assert torch.allclose(dense(x, weight, bias, gelu=True), expected, atol=1e-5, rtol=1e-5)
    out = dense(x, weight, bias, gelu=True)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert weight.grad is not None and bias.grad is not None


def test_channels_last_training_step_has_gradients(make_tiny):
    model = make_tiny("uniformer_video_small", depths=(1, 1, 1, 1)).train()
    model.channels_last = True
    model(torch.randn(1, 3, 4, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.blocks1.parameters())


def test_dense_products_are_counted_as_flops():
    """`uniformer info` counts FLOPs with FlopCounterMode, which must see the oneDNN products too."""
    from torch.utils.flop_counter import FlopCounterMode

    x, weight = torch.randn(3, 10, 16), torch.randn(24, 16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        dense(x, weight, torch.zeros(24), gelu=True)
    assert counter.get_total_flops() == 2 * 30 * 16 * 24
