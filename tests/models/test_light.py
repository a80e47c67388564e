"""Light models (XS/XXS): outputs per mode and Evo-ViT token evolution against a written-out reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import uniformer
from uniformer.models import EvolvingGlobalBlock, UniFormerLight


def test_training_returns_logits_and_class_token_logits(make_tiny):
    model = make_tiny("uniformer_xxs")
    x = torch.randn(2, 3, 64, 64)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    logits, cls_logits = out
    assert logits.shape == cls_logits.shape == (2, 10)
    assert not torch.allclose(logits, cls_logits)
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
        cls, feats = model.forward_features(x)
        assert torch.allclose(eval_out, model.head(feats.mean((2, 3))), atol=1e-6)
    assert isinstance(eval_out, torch.Tensor) and eval_out.shape == (2, 10)


def test_training_class_logits_come_from_the_class_token(make_tiny):
    model = make_tiny("uniformer_xxs").train()
    for m in model.modules():  # freeze BatchNorm statistics so that train and eval see the same maps
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, cls_logits = model(x)
        cls, feats = model.forward_features(x)
    assert torch.allclose(cls_logits, model.head_cls(model.norm_cls(cls.squeeze(1))), atol=1e-5)
    assert torch.allclose(logits, model.head(feats.mean((2, 3))), atol=1e-5)


def test_prune_and_trade_off_lengths_are_checked():
    with pytest.raises(ValueError, match="one value per block"):
        UniFormerLight(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), head_dim=16,
                       prune_ratios=([1.0], [0.5]))


# --- the evolving block, written out ---------------------------------------------------------
def _make_block(prune_ratio: float, trade_off: float = 0.5, seed: int = 0, **kwargs) -> EvolvingGlobalBlock:
    torch.manual_seed(seed)
    blk = EvolvingGlobalBlock(32, head_dim=8, prune_ratio=prune_ratio, trade_off=trade_off, **kwargs)
    with torch.no_grad():
        for norm in (blk.norm1, blk.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.2)
        blk.attn.qkv.weight.mul_(3)
    return blk.eval()


def _sequence_reference(blk: EvolvingGlobalBlock, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-norm attention + MLP over a B×N×C sequence whose first entry is the class token.
    Returns (new sequence, class attention over every entry, averaged over heads)."""
    B, N, C = seq.shape
    heads, hd = blk.attn.num_heads, blk.attn.head_dim
    h = F.layer_norm(seq, (C,), blk.norm1.weight, blk.norm1.bias, eps=1e-6)
    q, k, v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).view(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5, -1)
    a = (weights @ v).transpose(1, 2).reshape(B, N, C) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    if blk.gamma_1 is not None:
        a = blk.gamma_1 * a
    seq = seq + a
    h = F.layer_norm(seq, (C,), blk.norm2.weight, blk.norm2.bias, eps=1e-6)
    m = F.gelu(h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    if blk.gamma_2 is not None:
        m = blk.gamma_2 * m
    return seq + m, weights[:, :, 0].mean(1)


def _tokens_after_dpe(blk: EvolvingGlobalBlock, x: torch.Tensor) -> torch.Tensor:
    C = x.shape[1]
    x = x + F.conv2d(x, blk.pos_embed.weight, blk.pos_embed.bias, padding=1, groups=C)
    return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("layer_scale", [None, 0.3])
def test_full_ratio_block_is_plain_attention_over_cls_and_tokens(layer_scale):
    blk = _make_block(1.0, trade_off=0.25, layer_scale=layer_scale)
    cls, x = torch.randn(2, 1, 32), torch.randn(2, 32, 3, 4)
    with torch.no_grad():
        new_cls, new_x, score = blk(cls, x, None)
        seq, cls_attn = _sequence_reference(blk, torch.cat([cls, _tokens_after_dpe(blk, x)], 1))
        assert torch.allclose(new_cls, seq[:, :1], atol=1e-5)
        assert torch.allclose(new_x, seq[:, 1:].transpose(1, 2).reshape(2, 32, 3, 4), atol=1e-5)
        assert torch.allclose(score, cls_attn[:, 1:], atol=1e-6)  # the first block starts the score
        prior = torch.rand(2, 12)
        _, again, mixed = blk(cls, x, prior)
    assert torch.allclose(again, new_x, atol=1e-6)  # a full block does not use the score
    assert torch.allclose(mixed, 0.75 * prior + 0.25 * cls_attn[:, 1:], atol=1e-6)


@pytest.mark.parametrize("ratio, keep", [(0.5, 6), (0.25, 3), (0.7, 8)])
def test_pruning_block_matches_reference_and_keeps_order(ratio, keep):
    blk = _make_block(ratio, trade_off=0.4)
    B, H, W = 2, 3, 4
    N = H * W
    cls, x = torch.randn(B, 1, 32), torch.randn(B, 32, H, W)
    score = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(b)) for b in range(B)]).float()
    score = (score + 1) / (score + 1).sum(1, keepdim=True)  # distinct positive scores, a different order per sample
    with torch.no_grad():
        new_cls, new_x, new_score = blk(cls, x, score)
        tokens = _tokens_after_dpe(blk, x)
    new_tokens = new_x.flatten(2).transpose(1, 2)
    for b in range(B):
        kept = sorted(torch.topk(score[b], keep).indices.tolist())  # in map order: attention ignores order
        dropped = [i for i in range(N) if i not in kept]
        w = score[b, dropped] / score[b, dropped].sum()
        representative = (w[:, None] * tokens[b, dropped]).sum(0, keepdim=True)
        seq = torch.cat([cls[b], tokens[b, kept], representative])[None]
        with torch.no_grad():
            out, cls_attn = _sequence_reference(blk, seq)
        update = out[0, -1] - representative[0]
        assert torch.allclose(new_cls[b], out[0, :1], atol=1e-5)
        assert torch.allclose(new_tokens[b, kept], out[0, 1:-1], atol=1e-5)
        assert torch.allclose(new_tokens[b, dropped], tokens[b, dropped] + update, atol=1e-5)
        assert torch.allclose(new_score[b, kept], 0.6 * score[b, kept] + 0.4 * cls_attn[0, 1:-1], atol=1e-6)
        assert torch.equal(new_score[b, dropped], score[b, dropped])


def test_pruning_block_needs_a_matching_score():
    blk = _make_block(0.5)
    cls, x = torch.randn(1, 1, 32), torch.randn(1, 32, 2, 2)
    with pytest.raises(ValueError, match="needs a token score"):
        blk(cls, x, None)
    with pytest.raises(ValueError, match="covers 5 tokens"):
        blk(cls, x, torch.rand(1, 5))


def test_score_downsampling_keeps_the_total():
    cls, x, prior = torch.randn(2, 1, 32), torch.randn(2, 32, 4, 6), torch.rand(2, 24)
    down, plain = _make_block(1.0, downsample_score=True), _make_block(1.0)
    with torch.no_grad():
        _, x_down, score = down(cls, x, prior)
        _, x_plain, full = plain(cls, x, prior)
    assert torch.equal(x_down, x_plain)  # only the score is pooled, not the map
    assert score.shape == (2, 6) and full.shape == (2, 24)
    assert torch.allclose(score.sum(1), full.sum(1), atol=1e-6)


def test_score_downsampling_is_an_average_pool_rescaled_to_the_same_sum():
    blk = _make_block(1.0, trade_off=0.0, downsample_score=True)  # trade_off 0: the score passes unchanged
    prior = torch.rand(1, 16)
    with torch.no_grad():
        _, _, score = blk(torch.randn(1, 1, 32), torch.randn(1, 32, 4, 4), prior)
    pooled = F.avg_pool2d(prior.view(1, 1, 4, 4), 2).flatten(1)
    assert torch.allclose(score, pooled * prior.sum() / pooled.sum(), atol=1e-6)
    assert torch.allclose(score.sum(), prior.sum(), atol=1e-6)


# --- the score is threaded explicitly --------------------------------------------------------
def test_no_state_between_calls(make_tiny):
    model = make_tiny("uniformer_xxs")
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ya1, yb1 = model(a), model(b)
        yb2, ya2 = model(b), model(a)
        both = model(torch.cat([a, b]))
    assert torch.equal(ya1, ya2) and torch.equal(yb1, yb2)
    assert torch.allclose(both, torch.cat([ya1, yb1]), atol=1e-5)  # each sample prunes by its own score
    assert not torch.allclose(ya1, yb1)


def test_full_ratios_make_trade_offs_irrelevant(make_tiny):
    full = ([1.0, 1.0, 1.0], [1.0, 1.0])
    a = make_tiny("uniformer_xxs", prune_ratios=full, trade_offs=([1.0, 0.5, 0.5], [0.5, 0.5]))
    b = make_tiny("uniformer_xxs", prune_ratios=full, trade_offs=([1.0, 0.1, 0.9], [0.2, 0.3]))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-6)


def test_default_schedule_prunes_after_the_first_block(make_tiny):
    model = make_tiny("uniformer_xxs")
    assert [blk.prune_ratio for blk in model.blocks3] == [1.0, 0.5, 0.5]
    assert [blk.prune_ratio for blk in model.blocks4] == [0.5, 0.5]
    assert [blk.downsample_score for blk in model.blocks3] == [False, False, True]
    full = uniformer.create_model("uniformer_xs", num_classes=0, depths=(1, 1, 9, 3))
    assert [blk.prune_ratio for blk in full.blocks3] == [1.0] + [0.5] * 8
    assert [blk.trade_off for blk in full.blocks3] == [1.0] + [0.5] * 8


def test_pruning_changes_the_result(make_tiny):
    """With pruning the model is not the full-attention model (the evolution path is exercised)."""
    pruned = make_tiny("uniformer_xxs")
    full = make_tiny("uniformer_xxs", prune_ratios=([1.0] * 3, [1.0] * 2))
    full.load_state_dict(pruned.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(pruned(x), full(x), atol=1e-4)


def test_light_video_model(make_tiny):
    model = make_tiny("uniformer_video_xxs", layer_scale=True)
    assert model.blocks1[0].gamma_1 is not None
    assert torch.allclose(model.blocks3[0].gamma_1, torch.full((64,), 0.1))
    a, b = torch.randn(1, 3, 4, 64, 64), torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        ya, yb = model(a), model(b)
        assert torch.allclose(model(torch.cat([a, b])), torch.cat([ya, yb]), atol=1e-5)
    assert ya.shape == (1, 10)
