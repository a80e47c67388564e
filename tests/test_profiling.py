"""Counting: attention products are counted whatever kernel computes them (torch-version independent)."""
from __future__ import annotations

import pytest
import torch

import uniformer
from uniformer.models.layers import GlobalMHRA
from uniformer.profiling import compare_models, count_gflops


def test_attention_multiply_adds_are_counted():
    """qkv, q·kᵀ, attn·v and proj of one MHRA over N tokens of width C: 4·N·C² + 2·N²·C."""
    attn = GlobalMHRA(dim=32, head_dim=8)
    n, c = 10, 32
    assert attn.fused_attn
    assert count_gflops(attn, (n, c)) * 1e9 == pytest.approx(4 * n * c * c + 2 * n * n * c)
    assert attn.fused_attn  # the counting path does not change the module


def test_compare_models_reports_every_model_against_the_first():
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_small", depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128),
                                   head_dim=16, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    results = compare_models({"eager": model, "fuse": uniformer.fuse(model)}, x, rounds=2, iters=1, warmup=1)
    assert list(results) == ["eager", "fuse"]
    assert results["eager"]["relative_error"] == 0
    assert results["fuse"]["relative_error"] < 1e-4
    assert all(len(r["round_ms"]) == 2 and r["throughput"] > 0 for r in results.values())
