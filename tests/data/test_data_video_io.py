"""PyAV decoding: seeking decode equals full decode, VFR handling, fallbacks and clear errors."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from _data_helpers import frame_ids, indexed_frames, write_indexed_video

from uniformer.data import video_io
from uniformer.data.video_io import VideoDecodeError, VideoReader, read_all_frames, write_video


@pytest.mark.parametrize("codec,gop", [("libx264", 4), ("mpeg4", 4), ("libx264", None)])
def test_seek_decode_equals_full_decode(tmp_path, codec, gop):
    path = write_indexed_video(tmp_path / "v.mp4", 17, gop=gop, codec=codec)
    full = read_all_frames(path)
    assert frame_ids(full) == list(range(17))
    wanted = [13, 2, 9, 9, 16, 0, 5]
    with VideoReader(path) as reader:
        assert reader.num_frames == 17 and reader.fps == pytest.approx(25)
        got = reader.get_frames(wanted)
        assert not reader.used_full_decode
    assert got.shape == (len(wanted), 48, 64, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, full[wanted])  # bit-exact: same decoded pictures


def test_seek_starts_at_keyframe_not_file_start(tmp_path):
    """With keyframes every 4 frames, asking for frames 12..13 must not decode frames 0..11."""
    path = write_indexed_video(tmp_path / "v.mp4", 16, gop=4)
    decoded = []
    with VideoReader(path) as reader:
        original = reader._decode_iter

        def spy():
            for t, frame in original():
                decoded.append(int(round(t * 25)))
                yield t, frame

        reader._decode_iter = spy
        frames = reader.get_frames([12, 13])
    assert frame_ids(frames) == [12, 13]
    assert min(decoded) == 12 and max(decoded) <= 14


def test_reseek_across_gaps(tmp_path):
    path = write_indexed_video(tmp_path / "v.mp4", 16, gop=4)
    full = read_all_frames(path)
    with VideoReader(path, seek_gap_s=0.1) as reader:  # 0.1 s = 2.5 frames: seek for every far target
        got = reader.get_frames([0, 5, 10, 15])
    np.testing.assert_array_equal(got, full[[0, 5, 10, 15]])


def test_falls_back_to_full_decode_when_seek_fails(tmp_path, monkeypatch):
    path = write_indexed_video(tmp_path / "v.mp4", 16, gop=4)

    def broken_seek(self, time_s):
        raise video_io._SeekUnusable()

    monkeypatch.setattr(VideoReader, "_seek_frames", broken_seek)
    with VideoReader(path) as reader:
        got = reader.get_frames([3, 11])
        assert reader.used_full_decode
    assert frame_ids(got) == [3, 11]


def test_variable_frame_rate_picks_frame_displayed_at_grid_time(tmp_path):
    times_ms = [0, 40, 80, 120, 160, 200, 300, 400, 500, 600, 700, 800, 840, 880, 920, 960]
    path = tmp_path / "vfr.mp4"
    frames = indexed_frames(len(times_ms))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1000)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for t, array in zip(times_ms, frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with VideoReader(path) as reader:
        n, fps = reader.num_frames, reader.fps
        got = frame_ids(reader.get_frames(range(n)))
    assert n == 16
    # expected: the last source frame shown at or before the grid time i / fps (quarter-frame tolerance)
    expected = []
    for i in range(n):
        t_ms = 1000 * i / fps + 250 / fps
        expected.append(max(k for k, tk in enumerate(times_ms) if tk <= t_ms))
    assert got == expected
    assert got[5] == got[6] == 6  # 100 ms frames in the slow section are shown at two grid times
    assert 2 not in got  # 40 ms frames in the fast section are skipped
    assert got[-1] < 15  # the time grid (average fps) ends before the last frame's time


def test_webm_without_frame_count_metadata(tmp_path):
    path = tmp_path / "v.webm"
    write_video(path, indexed_frames(12), 25, codec="libvpx")
    with VideoReader(path) as reader:
        assert reader.stream.frames == 0  # webm stores no frame count: estimated from the duration
        assert reader.num_frames == 12
        assert frame_ids(reader.get_frames([0, 6, 11])) == [0, 6, 11]


def test_garbage_file_raises_named_error(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="garbage.mp4"):
        with VideoReader(path) as reader:
            reader.get_frames([0])


def test_truncated_files_raise(tmp_path):
    # default MP4: the index (moov) is at the end, so a cut file cannot be opened at all
    path = write_indexed_video(tmp_path / "cut.mp4", 16)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match="cut.mp4"):
        with VideoReader(path) as reader:
            reader.get_frames([0, 15])
    # faststart MP4: the index survives, metadata promises 16 frames, the data ends early
    path = write_indexed_video(tmp_path / "cut_fast.mp4", 16, container_options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.4)])
    with pytest.raises(VideoDecodeError, match=r"cut_fast.mp4.*(truncated|decod)"):
        with VideoReader(path) as reader:
            assert reader.num_frames == 16
            reader.get_frames([0, 15])


def test_file_ending_before_metadata_says(tmp_path):
    path = write_indexed_video(tmp_path / "v.mp4", 16)
    with VideoReader(path) as reader:
        reader.num_frames = 17  # metadata off by one frame: tolerated, the last real frame is repeated
        assert frame_ids(reader.get_frames([14, 16])) == [14, 15]
    with VideoReader(path) as reader:
        reader.num_frames = 32  # metadata promises twice the frames the file has: truncated
        with pytest.raises(VideoDecodeError, match=r"v.mp4: video ends at 0.600s .*truncated or too short"):
            reader.get_frames([0, 31])


def test_get_frames_argument_errors(tmp_path):
    path = write_indexed_video(tmp_path / "v.mp4", 4)
    with VideoReader(path) as reader:
        with pytest.raises(ValueError, match="empty"):
            reader.get_frames([])
        with pytest.raises(ValueError, match="negative"):
            reader.get_frames([-1])


def test_write_video_rejects_odd_size(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
