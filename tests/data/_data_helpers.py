"""Helpers for the data-pipeline tests: tiny generated videos whose frames encode their index.

Frame ``i`` of a generated video is a flat grey of level ``BASE + STEP * i``, so a decoded
frame tells which source frame it is (:func:`frame_ids`) despite lossy compression.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uniformer.data.video_io import write_video

BASE, STEP = 8, 14
HEIGHT, WIDTH = 48, 64


def indexed_frames(num_frames: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """``(N, H, W, 3)`` frames whose grey level encodes the frame index (N <= 17)."""
    assert num_frames <= 17
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        frames[i] = BASE + STEP * i
    return frames


def frame_ids(frames: np.ndarray) -> list[int]:
    """Recover frame indices from decoded ``(N, H, W, 3)`` uint8 frames of :func:`indexed_frames`."""
    return [int(round((float(f.mean()) - BASE) / STEP)) for f in frames]


def write_indexed_video(
    path: Path, num_frames: int = 16, *, gop: int | None = 4, codec: str | None = None, **kwargs
) -> Path:
    write_video(path, indexed_frames(num_frames), 25, codec=codec, gop=gop, **kwargs)
    return path


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path
