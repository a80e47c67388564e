"""Video reading and writing with PyAV.

Video training is bound by decoding, so :class:`VideoReader` seeks to the keyframe before the first wanted time
and decodes forward (seeking again across large gaps); it decodes from the start only when seeking fails or the
file has no usable duration / frame-count metadata. Frame ``i`` is the one displayed at ``start_time + i / fps``
(average rate, a quarter-frame tolerance): exactly frame ``i`` at constant rates, uniform in time at variable
ones. Every failure raises :class:`VideoDecodeError` naming the file.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class SampleLoadError(RuntimeError):
    """A dataset sample (video or image) could not be loaded; the message names the file."""


class VideoDecodeError(SampleLoadError):
    """A video could not be opened or decoded well enough to produce the requested frames."""


def _frame_seconds(frame: av.VideoFrame) -> float | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return float(frame.pts * frame.time_base)


class VideoReader:
    """Random access to frames of one video file: ``with VideoReader(path) as r: r.get_frames([0, 4, 8])``; frames
    more than ``seek_gap_s`` ahead are sought, ``threads`` decode (0 = FFmpeg's choice, 1 best in workers)."""

    #: fraction of the estimated duration (at least 2 frames) by which the file may end early
    #: before it is considered truncated; small mismatches between metadata and content are common.
    TAIL_TOLERANCE = 0.1

    def __init__(self, path: str | Path, *, seek_gap_s: float = 2.0, threads: int = 1) -> None:
        self.path = str(path)
        self.seek_gap_s = float(seek_gap_s)
        self.threads = int(threads)
        self.used_full_decode = False
        self._all_frames: list[tuple[float, av.VideoFrame]] | None = None
        self.container = self._open()
        try:
            self._read_metadata()
        except BaseException:
            self.close()
            raise

    def _open(self) -> av.container.InputContainer:
        try:
            container = av.open(self.path, mode="r")
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoDecodeError(f"{self.path}: cannot open video ({type(exc).__name__}: {exc})") from exc
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(f"{self.path}: file has no video stream")
        stream = container.streams.video[0]
        stream.thread_count = self.threads
        if self.threads != 1:
            stream.thread_type = "AUTO"
        self.stream = stream
        return container

    def _read_metadata(self) -> None:
        stream = self.stream
        self.time_base = stream.time_base or Fraction(1, 1000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else 0.0
        self.start_time = float(stream.start_time * self.time_base) if stream.start_time is not None else 0.0
        duration = None
        if stream.duration:
            duration = float(stream.duration * self.time_base)
        elif self.container.duration:
            duration = self.container.duration / av.time_base
            if self.container.start_time is not None and stream.start_time is None:
                self.start_time = self.container.start_time / av.time_base
        if stream.frames and stream.frames > 0 and self.fps > 0:
            self.num_frames = int(stream.frames)
        elif duration and duration > 0 and self.fps > 0:
            self.num_frames = max(1, int(round(duration * self.fps)))
        else:
            # No usable metadata: the only way to know the length is to decode everything.
            self._full_decode_all()
            self.num_frames = len(self._all_frames)  # >= 1: a file without decodable frames raised

    def _full_decode_all(self) -> None:
        frames: list[tuple[float, av.VideoFrame]] = []
        try:
            frames.extend(self._timed_frames(float))
        except av.FFmpegError as exc:
            if not frames:
                raise VideoDecodeError(f"{self.path}: decoding failed ({type(exc).__name__}: {exc})") from exc
        if not frames:
            raise VideoDecodeError(f"{self.path}: no decodable frames")
        if self.fps <= 0:
            self.fps = 1.0  # frames are then addressed by their decode order (times are frame indices)
            frames = [(float(i), f) for i, (_, f) in enumerate(frames)]
        self.start_time = frames[0][0]
        self.used_full_decode = True
        self._all_frames = frames

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
        self._all_frames = None

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Return the frames at ``indices`` (any order, repeats allowed) as ``(len, H, W, 3)`` uint8 RGB."""
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("get_frames: indices must not be empty")
        if min(indices) < 0:
            raise ValueError(f"get_frames: negative frame index in {indices}")
        wanted = sorted(set(indices))
        times = [self.start_time + i / self.fps for i in wanted]
        if self._all_frames is not None:
            picked = self._match(iter(self._all_frames), times, allow_seek=False)
        else:
            picked = self._decode_with_seek(times)
        by_index = dict(zip(wanted, picked))
        unique = {id(frame): frame for frame in picked}  # a frame shown at several wanted times converts once
        arrays = {key: frame.to_ndarray(format="rgb24") for key, frame in unique.items()}
        return np.stack([arrays[id(by_index[i])] for i in indices])

    def _decode_iter(self) -> Iterator[tuple[float, av.VideoFrame]]:
        for frame in self.container.decode(self.stream):
            t = _frame_seconds(frame)
            if t is None:
                raise _SeekUnusable()
            yield t, frame

    def _seek_frames(self, time_s: float) -> Iterator[tuple[float, av.VideoFrame]]:
        """Seek to the keyframe at or before ``time_s`` and return an iterator decoding forward from it."""
        offset = int(math.floor(max(time_s, 0.0) / self.time_base))
        try:
            self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError as exc:
            raise _SeekUnusable() from exc
        return self._decode_iter()

    def _decode_with_seek(self, times: list[float]) -> list[av.VideoFrame]:
        try:
            return self._match(None, times, allow_seek=True)
        except (_SeekUnusable, av.FFmpegError):
            pass  # a decode error right after seeking can be a seek problem (broken index): retry from the start
        self.used_full_decode = True
        self.container.close()
        self.container = self._open()
        try:
            return self._match(self._timed_frames(lambda i: self.start_time + i / self.fps), times, allow_seek=False)
        except av.FFmpegError as exc:
            raise VideoDecodeError(f"{self.path}: decoding failed ({type(exc).__name__}: {exc})") from exc

    def _timed_frames(self, fallback: Callable[[int], float]) -> Iterator[tuple[float, av.VideoFrame]]:
        """Frames decoded from the current position with their time (``fallback(i)`` where they carry none)."""
        for i, frame in enumerate(self.container.decode(self.stream)):
            t = _frame_seconds(frame)
            yield (t if t is not None else fallback(i)), frame

    def _match(self, frames: Iterator[tuple[float, av.VideoFrame]] | None, times: list[float], *,
               allow_seek: bool) -> list[av.VideoFrame]:
        """Assign to each (sorted) wanted time the frame displayed at that time."""
        eps = 0.25 / self.fps
        picked: list[av.VideoFrame | None] = [None] * len(times)
        j = 0
        prev: tuple[float, av.VideoFrame] | None = None
        just_sought = frames is None
        if just_sought:
            frames = self._seek_frames(times[0])
        reseek_ok = allow_seek
        while j < len(times):
            try:
                t, frame = next(frames)
            except StopIteration:
                break
            if just_sought:
                just_sought = False
                if t > times[j] + eps and times[j] > self.start_time + eps:
                    raise _SeekUnusable()  # landed after the wanted time: the seek index is unreliable
                if prev is not None and t <= prev[0]:
                    reseek_ok = False  # went backwards (long GOP): re-seeking does not pay off here
            while j < len(times) and t > times[j] + eps:
                picked[j] = prev[1] if prev is not None else frame  # before the first frame: use the first one
                j += 1
            if j == len(times):
                break
            prev = (t, frame)
            if reseek_ok and times[j] - t > self.seek_gap_s:
                frames = self._seek_frames(times[j])
                just_sought = True
        if j < len(times):
            if prev is None:
                raise VideoDecodeError(f"{self.path}: no decodable frames")
            last_t = prev[0]
            est_duration = self.num_frames / self.fps
            tolerance = max(2.0 / self.fps, self.TAIL_TOLERANCE * est_duration)
            if times[-1] - last_t > tolerance:
                raise VideoDecodeError(f"{self.path}: video ends at {last_t - self.start_time:.3f}s but frames up to "
                                       f"{times[-1] - self.start_time:.3f}s were requested (metadata says "
                                       f"{self.num_frames} frames at {self.fps:.3f} fps); the file is truncated or "
                                       "too short")
            for k in range(j, len(times)):
                picked[k] = prev[1]
        return picked  # type: ignore[return-value]


class _SeekUnusable(Exception):
    """Internal: the seek failed or landed after the wanted time, or frames carry no timestamps."""


def read_all_frames(path: str | Path) -> np.ndarray:
    """Decode every frame of ``path`` from the start (no seeking) as ``(N, H, W, 3)`` uint8 RGB."""
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.FFmpegError, OSError) as exc:
        raise VideoDecodeError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise VideoDecodeError(f"{path}: no frames")
    return np.stack(frames)


def pick_video_codec() -> str:
    """``libx264`` (H.264) when this PyAV build has it, else ``mpeg4``."""
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # codec missing in this FFmpeg build
            continue
    raise RuntimeError("PyAV has neither the 'libx264' nor the 'mpeg4' encoder; cannot write videos")


def write_video(path: str | Path, frames: np.ndarray | Iterable[np.ndarray], fps: int | Fraction = 25, *,
                codec: str | None = None, gop: int | None = None,
                container_options: dict[str, str] | None = None) -> str:
    """Encode RGB uint8 frames (an ``(N, H, W, 3)`` array or an iterable of ``(H, W, 3)``, H and W even; a generator
    keeps memory flat) to MP4; ``container_options`` go to the muxer. Returns the codec used."""
    codec = codec or pick_video_codec()
    path = Path(path)
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError(f"write_video({path}): no frames")
    height, width = first.shape[:2]
    if first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"write_video({path}): frames must be (H, W, 3) RGB, got {first.shape}")
    if height % 2 or width % 2:
        raise ValueError(f"write_video({path}): frame size {width}x{height} must be even for yuv420p")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop is not None:
            stream.gop_size = int(gop)
        if codec == "libx264":
            stream.options = {"crf": "20", "preset": "veryfast"}
        else:
            stream.bit_rate = max(200_000, width * height * int(fps) // 2)
        for array in itertools.chain([first], iterator):
            if array.shape != first.shape:
                raise ValueError(f"write_video({path}): frame shape {array.shape} differs from {first.shape}")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec
