"""Fixtures for the data-pipeline tests (tiny videos are generated once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # lets tests import _data_helpers under any pytest import mode
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """Four good 16-frame 64x48 videos (a.mp4 .. d.mp4) with a keyframe every 4 frames."""
    from _data_helpers import write_indexed_video

    root = tmp_path_factory.mktemp("videos")
    for name in "abcd":
        write_indexed_video(root / f"{name}.mp4")
    return root
