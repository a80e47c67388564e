"""Clip transforms: one random draw per clip (RandAugment, erasing, crop, flip), test resizing, normalisation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from uniformer.data.config import parse_data_config
from uniformer.data.transforms import ClipTransform, random_resized_box, scale_jitter_box, short_side_size


def make(split="train", **kwargs):
    base = {"format": "video_list", "input_size": 32, "scale_jitter": [32, 32], "hflip": False}
    return ClipTransform(parse_data_config({**base, **kwargs}), split)


def noise_frames(t=4, h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def test_output_layout_and_normalisation():
    frames = np.full((3, 40, 60, 3), 255, np.uint8)
    x = make("val", mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0])(frames)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_rand_augment_identical_across_frames_and_varies_between_clips():
    tf = make(rand_augment="rand-m9-n3-mstd0.5-inc1")
    plain = make()
    a, b = noise_frames(1, seed=1)[0], noise_frames(1, seed=2)[0]
    clip = np.stack([a, b, a, a])
    outputs, changed = [], 0
    for seed in range(8):
        x = tf(clip, np.random.default_rng(seed))
        # frames 0, 2, 3 share content, so an identical op sequence gives bit-identical results
        assert torch.equal(x[:, 0], x[:, 2]) and torch.equal(x[:, 0], x[:, 3])
        outputs.append(x)
        changed += not torch.allclose(x, plain(clip, np.random.default_rng(seed)), atol=1e-5)
    assert changed >= 6  # RandAugment really modifies the clips
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])  # different clips get different draws


def test_rand_augment_uses_same_ops_on_different_frames():
    """Geometric ops must move different frames the same way: check with a translated pair."""
    tf = make(rand_augment="rand-m9-n2-mstd0")
    base = noise_frames(1, seed=3)[0]
    apply = tf.apply_rand_augment
    clip = torch.from_numpy(np.stack([base, base[:, ::-1].copy()])).permute(0, 3, 1, 2)
    for s in range(5):
        out = apply(clip, s)
        # applying the same op draw to each frame separately must give the same results
        first = apply(clip[:1], s)
        second = apply(clip[1:], s)
        assert torch.equal(out[0], first[0]) and torch.equal(out[1], second[0])


def test_global_random_state_is_restored():
    tf = make(rand_augment="rand-m9-n3", random_erasing=1.0)
    random.seed(5)
    np.random.seed(5)
    expected_py, expected_np = random.random(), np.random.rand()
    random.seed(5)
    np.random.seed(5)
    tf(noise_frames(), np.random.default_rng(0))
    assert random.random() == expected_py and np.random.rand() == expected_np


def test_random_erasing_same_box_in_every_frame():
    tf = make(random_erasing=1.0, random_erasing_mode="const", mean=[0, 0, 0], std=[1, 1, 1])
    clip = np.full((4, 32, 32, 3), 200, np.uint8)
    clip[1] = 100  # different content, same box
    for seed in range(5):
        x = tf(clip, np.random.default_rng(seed))
        erased = x == 0  # (C, T, H, W)
        assert erased.any()
        masks = erased.all(dim=0)  # (T, H, W): all channels erased
        for t in range(1, 4):
            assert torch.equal(masks[t], masks[0])
        ys, xs = torch.nonzero(masks[0], as_tuple=True)
        box = masks[0][ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert box.all()  # a rectangle


def test_hflip_flips_all_frames_together():
    tf = make(hflip=True, mean=[0, 0, 0], std=[1, 1, 1])
    clip = np.zeros((3, 32, 32, 3), np.uint8)
    clip[:, :, :16] = 255  # left half white
    lefts = []
    for seed in range(20):
        x = tf(clip, np.random.default_rng(seed))
        left_bright = x[..., :16].mean(dim=(0, 2, 3)) > 0.5  # per frame
        assert left_bright.all() or (~left_bright).all()
        lefts.append(bool(left_bright[0]))
    assert any(lefts) and not all(lefts)


def test_scale_jitter_and_rrc_boxes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, h, w = scale_jitter_box(240, 320, 224, (256, 320), rng)
        assert h == w and 168 <= h <= 210 and 0 <= top <= 240 - h and 0 <= left <= 320 - w
        top, left, h, w = random_resized_box(240, 320, (0.08, 1.0), (0.75, 4 / 3), rng)
        assert 0 <= top <= 240 - h and 0 <= left <= 320 - w and h > 0 and w > 0
    x = make(random_resized_crop=True)(noise_frames(2, 50, 70), np.random.default_rng(0))
    assert x.shape == (3, 2, 32, 32)


def test_test_split_views_and_short_side_resize():
    assert short_side_size(240, 320, 64) == (64, 85)
    assert short_side_size(320, 240, 64) == (85, 64)
    tf = make("test", short_side=40, test_crops=3)
    x = tf(noise_frames(2, 60, 90))
    assert x.shape == (3, 3, 2, 32, 32)
    clips = tf.clips(noise_frames(4, 60, 90), num_clips=2)
    assert clips.shape == (6, 3, 2, 32, 32)
    with pytest.raises(ValueError, match="rng"):
        make("train")(noise_frames())
