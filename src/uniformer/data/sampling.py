"""Temporal sampling: which frame indices form a clip.

Two schemes, as used by the UniFormer / SlowFast recipes:

* **dense** (Kinetics): ``num_frames`` frames ``stride`` apart, spanning
  ``(num_frames - 1) * stride + 1`` frames.  Training picks the start uniformly at random
  among all positions where the span fits; testing takes ``num_clips`` evenly spaced clips,
  clip ``k`` starting at the centre of the ``k``-th of ``num_clips`` equal parts of the valid
  start range (one clip = the centred clip).  Videos shorter than the span start at 0 and
  repeat their last frame.
* **uniform** (Something-Something, TSN): the video is cut into ``num_frames`` equal
  segments and one frame is taken from each, at a random position in training and at
  position ``(k + 0.5) / num_clips`` of each segment for test clip ``k`` (one clip = the
  segment centres).

All functions are pure: randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np


def _check(num_video_frames: int, num_frames: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"video has {num_video_frames} frames; need at least 1")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def dense_indices(
    num_video_frames: int, num_frames: int, stride: int, *, rng: np.random.Generator | None
) -> np.ndarray:
    """One training clip (random start; ``rng`` required) or, with ``rng=None``, the centred clip."""
    if rng is None:
        return dense_test_indices(num_video_frames, num_frames, stride, num_clips=1)[0]
    _check(num_video_frames, num_frames)
    span = (num_frames - 1) * stride + 1
    delta = max(num_video_frames - span, 0)
    start = int(rng.integers(0, delta + 1))
    return np.minimum(start + np.arange(num_frames) * stride, num_video_frames - 1)


def dense_test_indices(num_video_frames: int, num_frames: int, stride: int, *, num_clips: int) -> np.ndarray:
    """``(num_clips, num_frames)`` indices of evenly spaced dense clips (deterministic)."""
    _check(num_video_frames, num_frames)
    span = (num_frames - 1) * stride + 1
    delta = max(num_video_frames - span, 0)
    starts = [int(round(delta * (2 * k + 1) / (2 * num_clips))) for k in range(num_clips)]
    clips = [np.minimum(s + np.arange(num_frames) * stride, num_video_frames - 1) for s in starts]
    return np.stack(clips)


def uniform_indices(num_video_frames: int, num_frames: int, *, rng: np.random.Generator | None) -> np.ndarray:
    """One frame per segment: random within each segment (training) or, with ``rng=None``, the centres."""
    if rng is None:
        return uniform_test_indices(num_video_frames, num_frames, num_clips=1)[0]
    _check(num_video_frames, num_frames)
    seg = num_video_frames / num_frames
    offsets = rng.uniform(0.0, seg, size=num_frames)
    idx = np.floor(np.arange(num_frames) * seg + offsets).astype(np.int64)
    return np.clip(idx, 0, num_video_frames - 1)


def uniform_test_indices(num_video_frames: int, num_frames: int, *, num_clips: int) -> np.ndarray:
    """``(num_clips, num_frames)``: clip ``k`` takes position ``(k + 0.5) / num_clips`` in every segment."""
    _check(num_video_frames, num_frames)
    seg = num_video_frames / num_frames
    clips = []
    for k in range(num_clips):
        idx = np.floor(np.arange(num_frames) * seg + seg * (k + 0.5) / num_clips).astype(np.int64)
        clips.append(np.clip(idx, 0, num_video_frames - 1))
    return np.stack(clips)


def sample_clips(
    num_video_frames: int,
    *,
    sampling: str,
    num_frames: int,
    stride: int,
    rng: np.random.Generator | None,
    num_clips: int = 1,
) -> np.ndarray:
    """``(num_clips, num_frames)`` indices; ``rng`` given = one random training clip (``num_clips`` must be 1)."""
    if sampling not in ("dense", "uniform"):
        raise ValueError(f"sampling must be 'dense' or 'uniform', got {sampling!r}")
    if rng is not None:
        if num_clips != 1:
            raise ValueError("random (training) sampling produces exactly one clip")
        if sampling == "dense":
            return dense_indices(num_video_frames, num_frames, stride, rng=rng)[None]
        return uniform_indices(num_video_frames, num_frames, rng=rng)[None]
    if sampling == "dense":
        return dense_test_indices(num_video_frames, num_frames, stride, num_clips=num_clips)
    return uniform_test_indices(num_video_frames, num_frames, num_clips=num_clips)
