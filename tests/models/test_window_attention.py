"""Window attention of the dense backbones against an independent, loop-based reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import uniformer
from uniformer.models import GlobalBlock


def _make_block(window_size, dim=32, head_dim=8, seed=0, sharpen=True) -> GlobalBlock:
    torch.manual_seed(seed)
    blk = GlobalBlock(dim, head_dim=head_dim, window_size=window_size)
    with torch.no_grad():  # non-trivial norms and biases
        for norm in (blk.norm1, blk.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.2)
        blk.attn.qkv.bias.normal_(0, 0.2)
        if sharpen:  # sharpen the attention so that a wrong window partition shows
            blk.attn.qkv.weight.mul_(10)
    return blk.eval()


def _attention(blk: GlobalBlock, tokens: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention of the block on B×N×C tokens, written out."""
    B, N, C = tokens.shape
    heads, hd = blk.attn.num_heads, blk.attn.head_dim
    qkv = tokens @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
    q, k, v = qkv.view(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B, N, C)
    return out @ blk.attn.proj.weight.T + blk.attn.proj.bias


def _reference(blk: GlobalBlock, x: torch.Tensor, window: int | None) -> torch.Tensor:
    """DPE; LayerNorm; zero-pad bottom/right; attention window by window; crop; residual; MLP."""
    B, C, H, W = x.shape
    x = x + F.conv2d(x, blk.pos_embed.weight, blk.pos_embed.bias, padding=1, groups=C)
    tokens = x.flatten(2).transpose(1, 2)
    normed = F.layer_norm(tokens, (C,), blk.norm1.weight, blk.norm1.bias, eps=1e-6)
    if window is None:
        y = _attention(blk, normed)
    else:
        Hp, Wp = -(-H // window) * window, -(-W // window) * window
        grid = torch.zeros(B, Hp, Wp, C)
        grid[:, :H, :W] = normed.view(B, H, W, C)
        out = torch.zeros_like(grid)
        for i in range(0, Hp, window):
            for j in range(0, Wp, window):
                win = grid[:, i:i + window, j:j + window].reshape(B, window * window, C)
                out[:, i:i + window, j:j + window] = _attention(blk, win).view(B, window, window, C)
        y = out[:, :H, :W].reshape(B, H * W, C)
    tokens = tokens + y
    h = F.layer_norm(tokens, (C,), blk.norm2.weight, blk.norm2.bias, eps=1e-6)
    h = F.gelu(h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    return (tokens + h).transpose(1, 2).reshape(B, C, H, W)


@pytest.mark.parametrize("window, hw", [(3, (7, 8)), (4, (5, 9)), (2, (4, 6)), (3, (6, 6))])
def test_window_block_matches_loop_reference(window, hw):
    blk = _make_block(window)
    x = torch.randn(2, 32, *hw)
    with torch.no_grad():
        got = blk(x)
        expected = _reference(blk, x, window)
    assert got.shape == x.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_windows_do_not_see_each_other():
    """Changing one window's input leaves every other window's output unchanged (DPE aside)."""
    blk = _make_block(4)
    with torch.no_grad():
        blk.pos_embed.weight.zero_()
        blk.pos_embed.bias.zero_()
        x = torch.randn(1, 32, 8, 8)
        x2 = x.clone()
        x2[:, :, :4, :4] += 1.0
        a, b = blk(x), blk(x2)
    assert torch.allclose(a[:, :, 4:, :], b[:, :, 4:, :], atol=1e-6)
    assert torch.allclose(a[:, :, :4, 4:], b[:, :, :4, 4:], atol=1e-6)
    assert not torch.allclose(a[:, :, :4, :4], b[:, :, :4, :4], atol=1e-3)


def test_window_at_least_map_size_is_global_attention_with_padding_tokens():
    """A window larger than the map is one window: global attention over the real tokens plus the
    zero tokens of the padding (they are keys and values, as in the original SABlock_Windows)."""
    windowed, plain = _make_block(8, sharpen=False), _make_block(None)
    plain.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 32, 5, 6)
    with torch.no_grad():
        got = windowed(x)
        B, C, H, W = x.shape
        # The same computation written as global attention over [tokens, 64 − 30 zero tokens].
        y = plain.pos_embed(x)
        tokens = y.flatten(2).transpose(1, 2)
        seq = torch.cat([plain.norm1(tokens), torch.zeros(B, 8 * 8 - H * W, C)], 1)
        tokens = tokens + _attention(plain, seq)[:, :H * W]
        tokens = tokens + plain.mlp(plain.norm2(tokens))
        expected = tokens.transpose(1, 2).reshape(B, C, H, W)
        global_out = plain(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got, _reference(windowed, x, 8), atol=1e-5)
    assert (got - global_out).abs().max() > 1e-2  # the padding tokens do matter


def test_window_equal_to_map_is_exactly_global_attention():
    windowed, plain = _make_block(6), _make_block(None, seed=1)
    plain.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        assert torch.allclose(windowed(x), plain(x), atol=1e-5)
        assert torch.allclose(plain(x), _reference(plain, x, None), atol=1e-5)


def test_window_block_in_3d_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        GlobalBlock(32, ndim=3, head_dim=8, window_size=4)
    with pytest.raises(ValueError, match="video"):
        uniformer.create_model("uniformer_video_small", depths=(1, 1, 1, 1), stage3="window")


@pytest.mark.parametrize("mode, expected", [
    ("hybrid", [5, 5, 5, None, 5, 5, 5, None]),
    ("window", [5] * 8),
    ("global", [None] * 8),
])
def test_stage3_modes_pick_window_sizes(mode, expected):
    model = uniformer.create_model("uniformer_small", depths=(1, 1, 8, 2), embed_dims=(16, 32, 64, 128), head_dim=16,
                                   features_only=True, stage3=mode, window_size=5)
    assert [blk.window_size for blk in model.blocks3] == expected
    assert [blk.window_size for blk in model.blocks4] == [None, None]  # stage 4 is always global


def test_hybrid_blocks_follow_their_window_setting():
    """In a hybrid backbone each stage-3 block computes what its own window setting says."""
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_small", depths=(1, 1, 4, 1), embed_dims=(16, 32, 64, 128),
                                   head_dim=16, features_only=True, stage3="hybrid", window_size=3).eval()
    x = torch.randn(1, 64, 5, 7)
    with torch.no_grad():
        for i, blk in enumerate(model.blocks3):
            expected = _reference(blk, x, None if (i + 1) % 4 == 0 else 3)
            assert torch.allclose(blk(x), expected, atol=1e-5)


def test_invalid_stage3_mode():
    with pytest.raises(ValueError, match="stage3"):
        uniformer.create_model("uniformer_small", depths=(1, 1, 1, 1), stage3="shifted")
