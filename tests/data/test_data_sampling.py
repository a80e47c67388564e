"""Frame-index samplers: dense (stride/offset) and uniform (segments), train vs test."""

from __future__ import annotations

import numpy as np
import pytest

from uniformer.data.sampling import (
    dense_indices,
    dense_test_indices,
    sample_clips,
    uniform_indices,
    uniform_test_indices,
)


def test_dense_train_span_and_random_offset():
    starts = set()
    for seed in range(200):
        idx = dense_indices(100, 8, 4, rng=np.random.default_rng(seed))
        assert len(idx) == 8
        # the original spans stride * num_frames = 32 frames: linspace(s, s + 31, 8) steps 31/7 ~ 4.43
        assert 4 <= np.diff(idx).min() and np.diff(idx).max() <= 5
        assert 0 <= idx[0] <= 100 - 32
        assert idx[-1] - idx[0] in (30, 31)
        starts.add(int(idx[0]))
    assert len(starts) > 50  # start uniform in [0, 68]
    assert min(starts) <= 2 and max(starts) >= 66


def test_dense_test_clips_match_the_original_rule():
    # n = 100, 8 x 4: span 32, delta 68; clip k of 3 starts at k * floor(68 / 2) = 0, 34, 68
    clips = dense_test_indices(100, 8, 4, num_clips=3)
    assert clips.shape == (3, 8)
    assert clips[:, 0].tolist() == [0, 34, 68]
    # linspace(0, 31, 8) = 0, 4.43, 8.86, 13.29, 17.71, 22.14, 26.57, 31 truncated
    assert clips[0].tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert clips[2].tolist() == [68, 72, 76, 81, 85, 90, 94, 99]
    np.testing.assert_array_equal(clips, dense_test_indices(100, 8, 4, num_clips=3))
    # one clip: start floor(delta / 2) = 34; rng=None means test behaviour
    assert dense_indices(100, 8, 4, rng=None)[0] == 34
    # 16 x 4 steps 63 / 15 = 4.2 frames, not 4
    assert dense_test_indices(64, 16, 4, num_clips=1)[0].tolist() == [
        0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46, 50, 54, 58, 63]


def test_dense_short_video_repeats_last_frame():
    assert dense_test_indices(10, 8, 4, num_clips=2)[1].tolist() == [0, 4, 8, 9, 9, 9, 9, 9]
    idx = dense_indices(10, 8, 4, rng=np.random.default_rng(0))
    assert idx.tolist() == [0, 4, 8, 9, 9, 9, 9, 9]  # delta 0: the start is 0 whatever the draw


def test_uniform_train_one_frame_per_segment():
    n, t = 50, 8
    seg = (n - 1) / t  # 6.125
    seen_offsets = set()
    for seed in range(100):
        idx = uniform_indices(n, t, rng=np.random.default_rng(seed))
        for i, v in enumerate(idx):
            assert round(seg * i) <= v <= round(seg * (i + 1)), (i, v)
        seen_offsets.add(int(idx[0]))
    assert seen_offsets == set(range(0, 7))  # [round(0), round(6.125)] inclusive


def test_uniform_test_matches_the_original_rule():
    n, t = 49, 8  # seg = 6
    one = uniform_test_indices(n, t, num_clips=1)
    assert one.tolist() == [[3, 9, 15, 21, 27, 33, 39, 45]]  # 6 i + int(6 / 2)
    three = uniform_test_indices(n, t, num_clips=3)
    assert three[:, 0].tolist() == [1, 3, 4]  # int(6 / 4 * (k + 1)) = 1, 3, 4
    assert np.all(three[:, 1:] - three[:, :-1] == 6)
    np.testing.assert_array_equal(uniform_indices(n, t, rng=None), one[0])
    # numpy round: halves to even. n = 21, t = 8: seg 2.5, starts round(2.5 i) = 0, 2, 5, 8, 10, 12, 15, 18
    assert (uniform_test_indices(21, 8, num_clips=1)[0] - 1).tolist() == [0, 2, 5, 8, 10, 12, 15, 18]


def test_uniform_fewer_video_frames_than_samples():
    idx = uniform_test_indices(5, 8, num_clips=1)[0]
    assert idx.min() >= 0 and idx.max() <= 4
    assert np.all(np.diff(idx) >= 0)


def test_resampled_frame_map_is_ffmpeg_r30():
    from uniformer.data.sampling import resampled_frame_map

    # 25 fps -> 30: image j shows round((j - 1) * 25 / 30), halves up (2.5 -> 3); 2 s = 60 images
    m = resampled_frame_map(50, 25.0)
    assert len(m) == 60 and m[:6].tolist() == [0, 1, 2, 3, 3, 4] and m[-1] == 49
    assert resampled_frame_map(30, 30.0).tolist() == list(range(30))  # identity at 30 fps
    m12 = resampled_frame_map(48, 12.0)
    assert len(m12) == 120 and m12[-1] == 47  # clamped to the last decoded frame
    with pytest.raises(ValueError, match="fps"):
        resampled_frame_map(10, 0.0)


def test_sample_clips_dispatch_and_errors():
    rng = np.random.default_rng(0)
    assert sample_clips(64, sampling="dense", num_frames=4, stride=2, rng=rng).shape == (1, 4)
    assert sample_clips(64, sampling="uniform", num_frames=4, stride=2, rng=None, num_clips=5).shape == (5, 4)
    with pytest.raises(ValueError, match="sampling"):
        sample_clips(64, sampling="sparse", num_frames=4, stride=2, rng=None)
    with pytest.raises(ValueError, match="exactly one clip"):
        sample_clips(64, sampling="dense", num_frames=4, stride=2, rng=rng, num_clips=2)
    with pytest.raises(ValueError, match="at least 1"):
        dense_indices(0, 4, 2, rng=rng)
