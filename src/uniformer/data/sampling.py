"""Temporal sampling: which frame indices form a clip, exactly as the original UniFormer code chose them.

Two schemes (``data.sampling``), each the rule of one dataset class of the original
(SlowFast-based ``video_classification/``):

* **dense** (``Kinetics``, decord backend, offset sampling): a clip spans
  ``stride * num_frames`` frames (not ``(num_frames - 1) * stride + 1``).  With
  ``delta = max(n - span, 0)``, test clip ``k`` of ``K`` starts at ``k * floor(delta / (K - 1))``
  (``floor(delta / 2)`` when ``K = 1``); training starts at a uniform real number in
  ``[0, delta]``.  The indices are the float32 ``torch.linspace(start, start + span - 1, T)``,
  clamped to ``[0, n - 1]`` and truncated, so a 16x4 clip steps 4.2 frames.  Videos shorter than
  the span repeat their last frame.
* **uniform** (``Sth``, Something-Something): ``seg = (n - 1) / T``; frame ``i`` lies in
  ``[round(seg * i), round(seg * (i + 1))]`` (numpy round: halves to even).  Training takes a
  uniform integer there; test clip ``k`` of ``K`` takes ``round(seg * i) + int(seg / (K + 1) * (k + 1))``.
  The original adds 1 to address 1-based ``img_%05d.jpg`` files; these functions return 0-based
  indices into the ``n`` frames (frame images) of the video. Randomness comes from the generator passed in.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _check(num_video_frames: int, num_frames: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"video has {num_video_frames} frames; need at least 1")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def _dense_clip(num_video_frames: int, num_frames: int, start: float, span: int) -> np.ndarray:
    # float32 linspace, clamp, truncate: the original's decord path, step for step
    index = torch.linspace(start, start + span - 1, num_frames)
    return torch.clamp(index, 0, num_video_frames - 1).long().numpy()


def dense_indices(num_video_frames: int, num_frames: int, stride: int, *, rng: np.random.Generator | None
                  ) -> np.ndarray:
    """One training clip (random start; ``rng`` required) or, with ``rng=None``, the centred clip."""
    if rng is None:
        return dense_test_indices(num_video_frames, num_frames, stride, num_clips=1)[0]
    _check(num_video_frames, num_frames)
    span = stride * num_frames
    delta = max(num_video_frames - span, 0)
    return _dense_clip(num_video_frames, num_frames, float(rng.uniform(0.0, delta)), span)


def dense_test_indices(num_video_frames: int, num_frames: int, stride: int, *, num_clips: int) -> np.ndarray:
    """``(num_clips, num_frames)`` indices of the original's test clips (deterministic)."""
    _check(num_video_frames, num_frames)
    span = stride * num_frames
    delta = max(num_video_frames - span, 0)
    if num_clips == 1:
        starts = [math.floor(delta / 2)]
    else:
        starts = [k * math.floor(delta / (num_clips - 1)) for k in range(num_clips)]
    return np.stack([_dense_clip(num_video_frames, num_frames, s, span) for s in starts])


def _segment_starts(num_video_frames: int, num_frames: int) -> tuple[float, np.ndarray, np.ndarray]:
    seg = float(num_video_frames - 1) / num_frames
    i = np.arange(num_frames)
    starts = np.round(seg * i).astype(np.int64)
    ends = np.round(seg * (i + 1)).astype(np.int64)
    return seg, starts, ends


def uniform_indices(num_video_frames: int, num_frames: int, *, rng: np.random.Generator | None) -> np.ndarray:
    """One frame per segment: random within each segment (training) or, with ``rng=None``, test clip 0 of 1."""
    if rng is None:
        return uniform_test_indices(num_video_frames, num_frames, num_clips=1)[0]
    _check(num_video_frames, num_frames)
    _, starts, ends = _segment_starts(num_video_frames, num_frames)
    idx = np.array([int(rng.integers(s, e + 1)) for s, e in zip(starts, ends)], dtype=np.int64)
    return np.minimum(idx, num_video_frames - 1)


def uniform_test_indices(num_video_frames: int, num_frames: int, *, num_clips: int) -> np.ndarray:
    """``(num_clips, num_frames)``: clip ``k`` adds ``int(seg / (num_clips + 1) * (k + 1))`` to each segment start."""
    _check(num_video_frames, num_frames)
    seg, starts, _ = _segment_starts(num_video_frames, num_frames)
    duration = seg / (num_clips + 1)
    clips = [np.minimum(starts + int(duration * (k + 1)), num_video_frames - 1) for k in range(num_clips)]
    return np.stack(clips)


def sample_clips(num_video_frames: int, *, sampling: str, num_frames: int, stride: int,
                 rng: np.random.Generator | None, num_clips: int = 1) -> np.ndarray:
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


def resampled_frame_map(num_decoded: int, fps: float, target_fps: int = 30) -> np.ndarray:
    """Decoded frame shown by each image of ``ffmpeg -i V -r target_fps img_%05d.jpg`` (0-based).

    Something-Something was evaluated on frames extracted at 30 fps.  ffmpeg's constant-rate
    output shows, in image ``j`` (1-based), the decoded frame ``round((j - 1) * fps / target_fps)``
    (halves up, clamped to the last frame), and writes ``round(num_decoded * target_fps / fps)``
    images (measured with ffmpeg 5.1 on 12, 25 and 30 fps files; see the conformance cases).
    """
    if num_decoded < 1 or fps <= 0:
        raise ValueError(f"need at least one frame and a positive fps, got {num_decoded} frames at {fps} fps")
    count = max(1, math.floor(num_decoded * target_fps / fps + 0.5))
    j = np.arange(count, dtype=np.float64)
    return np.minimum(np.floor(j * fps / target_fps + 0.5).astype(np.int64), num_decoded - 1)
