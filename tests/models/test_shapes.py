"""Input sizes that are not multiples of the strides, for images, dense backbones and videos."""
from __future__ import annotations

import pytest
import torch

import uniformer


def _floor_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Map sizes of the patch-embedding stem: 4×4 then three 2×2 stride-s convs, each flooring."""
    sizes, h, w = [], h // 4, w // 4
    for _ in range(4):
        sizes.append((h, w))
        h, w = h // 2, w // 2
    return sizes


@pytest.mark.parametrize("hw", [(200, 300), (225, 333)])
def test_features_only_maps_floor_at_every_stride(tiny_kwargs, hw):
    tiny_kwargs.pop("num_classes")
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_small", features_only=True, **tiny_kwargs).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, *hw))
    assert [tuple(m.shape[-2:]) for m in maps] == _floor_sizes(*hw)
    assert [m.shape[1] for m in maps] == [16, 32, 64, 128]
    if hw == (200, 300):
        assert maps[0].shape[-2:] == (50, 75)
        assert maps[3].shape[-2:] == (6, 9)
    else:
        assert [tuple(m.shape[-2:]) for m in maps] == [(56, 83), (28, 41), (14, 20), (7, 10)]
    assert all(torch.isfinite(m).all() for m in maps)


def test_window_backbone_on_odd_size(tiny_kwargs):
    """Window attention with padding on a map whose sides are not window multiples."""
    tiny_kwargs.pop("num_classes")
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_small", features_only=True, stage3="window", window_size=3,
                                   **tiny_kwargs).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 97, 129))
    assert [tuple(m.shape[-2:]) for m in maps] == _floor_sizes(97, 129)
    assert all(torch.isfinite(m).all() for m in maps)


@pytest.mark.parametrize("hw", [(97, 129), (64, 80), (33, 47)])
def test_classification_on_odd_sizes(make_tiny, hw):
    model = make_tiny()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, *hw))
        logits = model(torch.randn(2, 3, *hw))
    assert feats.shape[-2:] == _floor_sizes(*hw)[-1]
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_classification_is_batch_independent_on_odd_size(make_tiny):
    model = make_tiny()
    x = torch.randn(3, 3, 97, 129)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("hw, expected", [((97, 129), (25, 33)), ((64, 96), (16, 24)), ((65, 63), (17, 16))])
def test_conv_stem_rounds_up(make_tiny, hw, expected):
    """S+ stem: two 3×3 stride-2 convs with padding 1, each giving ceil(h / 2)."""
    model = make_tiny("uniformer_small_plus")
    with torch.no_grad():
        stem = model.patch_embed1(torch.randn(1, 3, *hw))
        logits = model(torch.randn(1, 3, *hw))
    assert stem.shape[-2:] == expected
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["uniformer_xxs", "uniformer_xs"])
def test_light_models_on_odd_sizes(make_tiny, name):
    model = make_tiny(name)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 97, 129))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_video_t6_64x96(make_tiny):
    model = make_tiny("uniformer_video_small")
    x = torch.randn(1, 3, 6, 64, 96)
    with torch.no_grad():
        stem = model.patch_embed1(x)
        feats = model.forward_features(x)
        logits = model(x)
    assert stem.shape == (1, 16, 3, 16, 24)  # T: (6 + 2·1 − 3) // 2 + 1 = 3
    assert feats.shape == (1, 128, 3, 2, 3)
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


def test_light_video_t6(make_tiny):
    model = make_tiny("uniformer_video_xxs")
    with torch.no_grad():
        cls, feats = model.forward_features(torch.randn(1, 3, 6, 64, 96))
        logits = model(torch.randn(1, 3, 6, 64, 96))
    # Conv stem: time kept by the first conv (1×2×2), halved by the second (2×2×2).
    assert feats.shape == (1, 128, 3, 2, 3)
    assert cls.shape == (1, 1, 128)
    assert logits.shape == (1, 10)
