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


def test_dense_train_stride_and_random_offset():
    starts = set()
    for seed in range(200):
        idx = dense_indices(100, 8, 4, rng=np.random.default_rng(seed))
        assert len(idx) == 8
        assert np.all(np.diff(idx) == 4)
        assert 0 <= idx[0] <= 100 - (7 * 4 + 1)
        assert idx[-1] <= 99
        starts.add(int(idx[0]))
    # 72 possible starts (0..71): random offsets must cover the range, including both ends
    assert len(starts) > 50
    assert min(starts) <= 2 and max(starts) >= 69


def test_dense_test_clips_even_and_deterministic():
    clips = dense_test_indices(100, 8, 4, num_clips=3)
    assert clips.shape == (3, 8)
    delta = 100 - 29  # valid start range [0, 71]
    expected_starts = [round(delta * (2 * k + 1) / 6) for k in range(3)]
    assert clips[:, 0].tolist() == expected_starts == [12, 36, 59]
    assert np.all(np.diff(clips, axis=1) == 4)
    np.testing.assert_array_equal(clips, dense_test_indices(100, 8, 4, num_clips=3))
    # one clip = the centred clip; rng=None means test behaviour
    centred = dense_indices(100, 8, 4, rng=None)
    assert centred[0] == round(delta / 2)


def test_dense_short_video_repeats_last_frame():
    idx = dense_indices(10, 8, 4, rng=np.random.default_rng(0))
    assert idx.tolist() == [0, 4, 8, 9, 9, 9, 9, 9]
    assert dense_test_indices(10, 8, 4, num_clips=2)[1].tolist() == [0, 4, 8, 9, 9, 9, 9, 9]


def test_uniform_train_one_frame_per_segment():
    n, t = 50, 8
    seg = n / t
    seen_offsets = set()
    for seed in range(100):
        idx = uniform_indices(n, t, rng=np.random.default_rng(seed))
        for i, v in enumerate(idx):
            assert int(np.floor(i * seg)) <= v < int(np.ceil((i + 1) * seg)), (i, v)
        seen_offsets.add(int(idx[0]))
    assert seen_offsets == set(range(0, 7))  # every position of the first segment [0, 6.25) is used


def test_uniform_test_centres_and_multiple_clips():
    n, t = 48, 8  # segments of 6 frames
    one = uniform_test_indices(n, t, num_clips=1)
    assert one.tolist() == [[3, 9, 15, 21, 27, 33, 39, 45]]
    three = uniform_test_indices(n, t, num_clips=3)
    assert three[:, 0].tolist() == [1, 3, 5]  # positions (k + 0.5) / 3 of the first segment
    assert np.all(three[:, 1:] - three[:, :-1] == 6)
    np.testing.assert_array_equal(uniform_indices(n, t, rng=None), one[0])


def test_uniform_fewer_video_frames_than_samples():
    idx = uniform_test_indices(5, 8, num_clips=1)[0]
    assert idx.min() >= 0 and idx.max() <= 4
    assert np.all(np.diff(idx) >= 0)


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
