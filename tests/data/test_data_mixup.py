"""Mixup/CutMix on 5-D clip batches: the CutMix box lies in H x W and is shared by all frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uniformer.data import build_mixup


def two_clips(t=4, h=16, w=20):
    x = torch.zeros(2, 3, t, h, w)
    x[1] = 1.0
    return x, torch.tensor([0, 2])


def test_disabled_returns_none():
    assert build_mixup({}, 10) is None
    assert build_mixup({"mixup": 0, "cutmix": 0, "label_smoothing": 0.1}, 10) is None


def test_cutmix_box_in_height_width_same_for_all_frames():
    mix = build_mixup({"cutmix": 1.0, "label_smoothing": 0.0}, 4)
    checked = 0
    for seed in range(10):
        np.random.seed(seed)
        x, y = two_clips()
        out, target = mix(x, y)
        assert out.shape == (2, 3, 4, 16, 20) and target.shape == (2, 4)
        pasted = out[0] == 1.0  # (C, T, H, W): where clip 1 was pasted into clip 0
        if not pasted.any():
            continue
        for c in range(3):
            for t in range(4):
                assert torch.equal(pasted[c, t], pasted[0, 0])  # same box in every channel and frame
        ys, xs = torch.nonzero(pasted[0, 0], as_tuple=True)
        assert pasted[0, 0][ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # a rectangle in H x W
        area = pasted[0, 0].float().mean().item()
        assert target[0, 2].item() == pytest.approx(area, abs=1e-5)  # label weight = pasted area
        assert target[0, 0].item() == pytest.approx(1 - area, abs=1e-5)
        checked += 1
    assert checked >= 5


def test_mixup_blends_whole_clips_with_soft_targets():
    mix = build_mixup({"mixup": 0.8, "label_smoothing": 0.0}, 3)
    np.random.seed(0)
    x, y = two_clips()
    out, target = mix(x, y)
    lam = target[0, 0].item()
    assert 0 < lam < 1
    assert torch.allclose(out[0], torch.full_like(out[0], 1 - lam), atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(2))


def test_label_smoothing_without_mixing_and_odd_batch():
    mix = build_mixup({"mixup": 0.8, "mixup_prob": 0.0, "label_smoothing": 0.1}, 4)
    x = torch.randn(3, 3, 2, 8, 8)
    original = x.clone()
    out, target = mix(x, torch.tensor([1, 3, 0]))
    assert torch.equal(out, original)
    expected = torch.full((3, 4), 0.025)
    expected[0, 1] = expected[1, 3] = expected[2, 0] = 0.925
    assert torch.allclose(target, expected)


def test_odd_batch_mixes_the_even_part_and_images_work():
    mix = build_mixup({"mixup": 1.0, "label_smoothing": 0.0}, 2)
    np.random.seed(1)
    x = torch.stack([torch.zeros(3, 2, 4, 4), torch.ones(3, 2, 4, 4), torch.full((3, 2, 4, 4), 5.0)])
    out, target = mix(x, torch.tensor([0, 1, 1]))
    assert target.shape == (3, 2) and torch.equal(out[2], torch.full((3, 2, 4, 4), 5.0))
    assert torch.equal(target[2], torch.tensor([0.0, 1.0]))
    assert 0 < out[0].mean() < 1  # the first pair was mixed
    images, target = mix(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))
    assert images.shape == (4, 3, 8, 8) and target.shape == (4, 2)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="mixup_prob"):
        build_mixup({"mixup": 0.8, "mixup_prob": 2}, 4)
    with pytest.raises(ValueError, match="cutmix_minmax"):
        build_mixup({"cutmix_minmax": [0.9, 0.1]}, 4)
    with pytest.raises(ValueError, match="num_classes"):
        build_mixup({"mixup": 0.8}, 0)
