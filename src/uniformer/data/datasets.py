"""Classification datasets, their builder and their collate function.

Items are ``{"input", "label", "index", "failures"}``; ``input`` is ``(C, T, H, W)`` for video train/val,
``(V, C, T, H, W)`` for video test (``V = test_clips * test_crops``, clip-major), ``(C, H, W)`` / ``(V, C, H, W)``
for images. With ``data.num_sample = N > 1`` a training item holds N clips augmented from one decoding, which
:func:`collate` flattens into the batch (the original's ``multiple_samples_collate``). An unloadable sample is
replaced by another one drawn from ``(seed, index, attempt)`` and its path is listed in ``failures``.
Training draws from a numpy generator seeded with ``(data.seed, index, attempt)`` and one draw of torch's RNG,
which the runner seeds per sample; val and test items are deterministic.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .annotations import (
    Entry,
    check_missing,
    infer_classes,
    join_root,
    read_class_names,
    read_list_file,
    read_sthv2_annotations,
    read_sthv2_labels,
    resolve_file,
    resolve_labels,
    scan_image_folder,
)
from .config import SPLITS, DataConfig, parse_data_config
from .sampling import resampled_frame_map, sample_clips
from .transforms import ClipTransform
from .video_io import SampleLoadError, VideoDecodeError, VideoReader

logger = logging.getLogger(__name__)

#: exceptions that mean "this sample's file is bad" (anything else is a bug and propagates)
LOAD_ERRORS = (SampleLoadError, OSError, EOFError, av.FFmpegError, Image.DecompressionBombError)


class ClassificationDataset(Dataset):
    """Shared logic: sample list, classes, per-item RNG and replacement of unloadable samples."""

    is_video = False

    def __init__(self, cfg: DataConfig, split: str, samples: list[tuple[str, int]], classes: list[str], source: str,
                 num_skipped_missing: int = 0) -> None:
        if not samples:
            raise ValueError(f"{source}: no samples for split {split!r}")
        self.cfg = cfg
        self.split = split
        self.samples = samples
        self.classes = list(classes)
        self.source = source
        self.num_skipped_missing = num_skipped_missing
        self.transform = ClipTransform(cfg, split)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def samples_per_item(self) -> int:
        """Clips per item (``data.num_sample`` for training, else 1); the runner's batches hold whole items."""
        return self.cfg.num_sample if self.split == "train" else 1

    @property
    def epoch_repeats(self) -> int:
        """``data.repeated_aug`` for training (the runner's sampler repeats each index that often), else 0."""
        return self.cfg.repeated_aug if self.split == "train" else 0

    def _augmented(self, frames: np.ndarray, num_clips: int, rng: np.random.Generator | None) -> torch.Tensor:
        """The split's transform of decoded ``frames``; ``num_sample`` independent draws stacked for training."""
        if self.split == "train" and self.cfg.num_sample > 1:
            return torch.stack([self.transform(frames, rng) for _ in range(self.cfg.num_sample)])
        return self.transform.clips(frames, num_clips, rng)

    @property
    def num_views(self) -> int:
        """Views per test item (the size of the leading V axis); 1 for train and val."""
        if self.split != "test":
            return 1
        return self.cfg.test_clips * self.cfg.test_crops if self.is_video else self.cfg.test_crops

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, classes={self.num_classes}, "
                f"source={self.source!r})")

    def _item_rng(self, index: int, attempt: int) -> np.random.Generator | None:
        if self.split != "train":
            return None
        entropy = int(torch.randint(0, 2**62, (1,)).item())
        return np.random.default_rng([self.cfg.seed, index, attempt, entropy])

    def replacement_index(self, index: int, attempt: int) -> int:
        """Deterministic stand-in for sample ``index`` after its ``attempt``-th failure (never ``index`` itself)."""
        n = len(self.samples)
        if n < 2:
            raise SampleLoadError(f"{self.source}: the only sample failed to load and there is nothing to replace it")
        r = int(np.random.default_rng([self.cfg.seed, index, attempt, 7919]).integers(n - 1))
        return r if r < index else r + 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        failures: list[str] = []
        current = int(index)
        last_error: BaseException | None = None
        for attempt in range(self.cfg.max_retries + 1):
            path, label = self.samples[current]
            try:
                x = self.load(path, self._item_rng(current, attempt))
            except LOAD_ERRORS as exc:
                last_error = exc
                failures.append(path)
                logger.warning("replacing unloadable sample %s (index %d): %s", path, current, exc)
                current = self.replacement_index(int(index), attempt)
                continue
            item = {"input": x, "label": int(label), "index": current, "failures": failures}
            if self.samples_per_item > 1:
                item["num_sample"] = self.samples_per_item
            return item
        raise SampleLoadError(f"{self.source}: {len(failures)} consecutive samples failed to load starting at "
                              f"index {index} ({failures}); last error: {last_error}")


class VideoClassificationDataset(ClassificationDataset):
    """Videos decoded with PyAV, sampled densely or uniformly, transformed per clip."""

    is_video = True

    def clip_indices(self, num_video_frames: int, rng: np.random.Generator | None) -> np.ndarray:
        """``(clips, num_frames)`` frame indices this split uses for a video of ``num_video_frames`` frames."""
        c = self.cfg
        return sample_clips(num_video_frames, sampling=c.sampling, num_frames=c.num_frames, stride=c.stride, rng=rng,
                            num_clips=c.test_clips if self.split == "test" else 1)

    def _check_length(self, path: str, num_video_frames: int) -> None:
        """Videos shorter than ``data.min_video_frames`` count as unloadable."""
        if num_video_frames < self.cfg.min_video_frames:
            raise VideoDecodeError(f"{path}: video too short ({num_video_frames} frames < "
                                   f"minimum={self.cfg.min_video_frames})")

    def frame_indices(self, num_video_frames: int, fps: float, rng: np.random.Generator | None) -> np.ndarray:
        """``(clips, num_frames)`` decoded-frame indices; with ``target_fps`` the clips are sampled from the images
        ``ffmpeg -r target_fps`` would extract, each mapped to the decoded frame it shows."""
        if self.cfg.target_fps is None:
            return self.clip_indices(num_video_frames, rng)
        shown = resampled_frame_map(num_video_frames, fps, self.cfg.target_fps)
        return shown[self.clip_indices(len(shown), rng)]

    def load(self, path: str, rng: np.random.Generator | None) -> torch.Tensor:
        with VideoReader(path, threads=self.cfg.decode_threads) as reader:
            self._check_length(path, reader.num_frames)
            clips = self.frame_indices(reader.num_frames, reader.fps, rng)
            frames = reader.get_frames(clips.reshape(-1))
        return self._augmented(frames, len(clips), rng)  # decoded once, augmented num_sample times for training


def read_frame(path: str, what: str = "frame image") -> np.ndarray:
    """One image as ``(H, W, 3)`` uint8 RGB (the transform reverses it for ``channel_order: BGR``)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise SampleLoadError(f"{path}: {what} not found") from exc
    except (*LOAD_ERRORS, ValueError, SyntaxError) as exc:
        raise SampleLoadError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from exc


class FrameFolderDataset(VideoClassificationDataset):
    """Folders of frame images (``frame_template``, 1-based), the original's SSv1/SSv2 format; frame counts come
    from the split list (``folder num_frames label``), as in the original ``Sth`` dataset."""

    def __init__(self, *args, frame_counts: Mapping[str, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frame_counts = dict(frame_counts)

    def load(self, path: str, rng: np.random.Generator | None) -> torch.Tensor:
        self._check_length(path, self.frame_counts[path])
        clips = self.clip_indices(self.frame_counts[path], rng)
        wanted, order = np.unique(clips.reshape(-1), return_inverse=True)  # each image read once
        images = [read_frame(os.path.join(path, self.cfg.frame_template.format(i + 1))) for i in wanted.tolist()]
        shapes = {f.shape for f in images}
        if len(shapes) != 1:
            raise SampleLoadError(f"{path}: frame images differ in size {sorted(shapes)}")
        return self._augmented(np.stack(images)[order], len(clips), rng)


class ImageClassificationDataset(ClassificationDataset):
    """Images loaded with PIL (converted to RGB) and transformed like one-frame clips."""

    def load(self, path: str, rng: np.random.Generator | None) -> torch.Tensor:
        return self._augmented(read_frame(path, "image")[None], 1, rng).squeeze(-3)  # drop the T axis


# ---------------------------------------------------------------------- builder
def _split_key(cfg: DataConfig, suffix: str, split: str) -> str:
    """The config key of ``split``'s list, annotations or folder (test falls back to val)."""
    if split == "test" and getattr(cfg, f"test{suffix}") is None:
        return f"val{suffix}"
    return f"{split}{suffix}"


def _split_file(cfg: DataConfig, suffix: str, split: str) -> Path:
    key = _split_key(cfg, suffix, split)
    if getattr(cfg, key) is None:
        raise ValueError(f"data config: '{key}' is required for split {split!r} with format {cfg.format!r}")
    return resolve_file(getattr(cfg, key), cfg.root, key)


def _build_from_lists(cfg: DataConfig, split: str, cls: type[ClassificationDataset]) -> ClassificationDataset:
    list_path = _split_file(cfg, "_list", split)
    entries = read_list_file(list_path)
    if cfg.class_names is not None:
        names_path = resolve_file(cfg.class_names, cfg.root, "class_names")
        classes = read_class_names(names_path)
        if cfg.num_classes is not None and cfg.num_classes != len(classes):
            raise ValueError(f"data config: class_names {names_path} lists {len(classes)} classes but num_classes "
                             f"is {cfg.num_classes}")
    else:
        # Infer from every configured list so all splits agree on the class set.
        all_entries, sources = [entries], [str(list_path)]
        value = getattr(cfg, _split_key(cfg, "_list", split))
        for other in SPLITS:
            other_value = getattr(cfg, f"{other}_list")
            if other_value is None or other_value == value:
                continue
            try:
                other_path = resolve_file(other_value, cfg.root, f"{other}_list")
            except FileNotFoundError:
                continue
            all_entries.append(read_list_file(other_path))
            sources.append(str(other_path))
        classes = infer_classes(all_entries, cfg.num_classes, sources)
    labels = resolve_labels(entries, classes, str(list_path), cfg.num_classes)
    samples = [(join_root(e.path, cfg.root), lab) for e, lab in zip(entries, labels)]
    samples, dropped = check_missing(samples, [e.where for e in entries], str(list_path), skip_missing=cfg.skip_missing)
    return cls(cfg, split, samples, classes, str(list_path), dropped)


def read_frame_list(path: str | Path) -> tuple[list[Entry], list[int]]:
    """The original's frame-folder split list: ``folder num_frames label`` per line (blank lines ignored)."""
    entries: list[Entry] = []
    counts: list[int] = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=2)
        where = f"{path}:{lineno}"
        if len(parts) != 3 or not parts[1].isdigit():
            raise ValueError(f"{where}: expected 'folder num_frames label', got {line.strip()!r}")
        if int(parts[1]) < 1:
            raise ValueError(f"{where}: num_frames must be >= 1, got {parts[1]}")
        entries.append(Entry(parts[0], parts[2], where))
        counts.append(int(parts[1]))
    if not entries:
        raise ValueError(f"{path}: frame list is empty")
    return entries, counts


def _build_frame_folder(cfg: DataConfig, split: str) -> ClassificationDataset:
    list_path = _split_file(cfg, "_list", split)
    entries, counts = read_frame_list(list_path)
    if cfg.class_names is not None:
        classes = read_class_names(resolve_file(cfg.class_names, cfg.root, "class_names"))
    else:
        classes = infer_classes([entries], cfg.num_classes)
    labels = resolve_labels(entries, classes, str(list_path), cfg.num_classes)
    samples = [(join_root(e.path, cfg.root), lab) for e, lab in zip(entries, labels)]
    frame_counts = {path: n for (path, _), n in zip(samples, counts)}
    samples, dropped = check_missing(samples, [e.where for e in entries], str(list_path),
                                     skip_missing=cfg.skip_missing, exists=os.path.isdir, what="frame folders")
    return FrameFolderDataset(cfg, split, samples, classes, str(list_path), dropped, frame_counts=frame_counts)


def _build_sthv2(cfg: DataConfig, split: str) -> ClassificationDataset:
    if cfg.labels_file is None:
        raise ValueError("data config: 'labels_file' is required for format 'sthv2'")
    labels_path = resolve_file(cfg.labels_file, cfg.root, "labels_file")
    classes = read_sthv2_labels(labels_path)
    if cfg.class_names is not None:
        names = read_class_names(resolve_file(cfg.class_names, cfg.root, "class_names"))
        if len(names) != len(classes):
            raise ValueError(f"data config: class_names has {len(names)} names but labels_file {labels_path} has "
                             f"{len(classes)}")
    ann_path = _split_file(cfg, "_annotations", split)
    samples, wheres = read_sthv2_annotations(ann_path, classes, cfg.root, cfg.video_ext)
    samples, dropped = check_missing(samples, wheres, str(ann_path), skip_missing=cfg.skip_missing)
    display = names if cfg.class_names is not None else classes
    return VideoClassificationDataset(cfg, split, samples, display, str(ann_path), dropped)


def _build_image_folder(cfg: DataConfig, split: str) -> ClassificationDataset:
    key = _split_key(cfg, "_dir", split)
    folder = Path(join_root(getattr(cfg, key) or ("val" if split == "test" else split), cfg.root))
    classes = None
    if cfg.class_names is not None:
        classes = read_class_names(resolve_file(cfg.class_names, cfg.root, "class_names"))
    elif split != "train":
        train_folder = Path(join_root(cfg.train_dir or "train", cfg.root))
        if train_folder.is_dir():  # use the training classes so that indices agree across splits
            classes = sorted(d.name for d in train_folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folder.is_dir():
        raise FileNotFoundError(f"data config: {key} folder {folder} does not exist (format 'image_folder')")
    samples, classes = scan_image_folder(folder, classes)
    return ImageClassificationDataset(cfg, split, samples, classes, str(folder))


def build_dataset(cfg: Mapping[str, Any] | DataConfig, split: str) -> ClassificationDataset:
    """The dataset for ``split`` ("train" | "val" | "test") of the ``data:`` section (:mod:`uniformer.data.config`);
    errors name the offending key or file (all missing files in one error)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    c = parse_data_config(cfg)
    builders = {"video_list": functools.partial(_build_from_lists, cls=VideoClassificationDataset),
                "image_list": functools.partial(_build_from_lists, cls=ImageClassificationDataset),
                "sthv2": _build_sthv2, "frame_folder": _build_frame_folder, "image_folder": _build_image_folder}
    return builders[c.format](c, split)


def collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack items into ``{"input": (B, ...), "label": (B,) long, "index": (B,) long, "failures": [paths]}``;
    items of ``num_sample = N`` clips give ``B x N`` rows, an item's clips adjacent with its label and index."""
    if not batch:
        raise ValueError("collate: empty batch")
    shapes = {tuple(item["input"].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(f"collate: inputs have different shapes {sorted(shapes)}")
    repeats = {int(item.get("num_sample", 1)) for item in batch}
    if len(repeats) != 1:
        raise ValueError(f"collate: items hold different numbers of clips {sorted(repeats)}")
    n = repeats.pop()
    x = torch.stack([item["input"] for item in batch])
    if n > 1:
        x = x.flatten(0, 1)
    return {
        "input": x,
        "label": torch.tensor([int(item["label"]) for item in batch], dtype=torch.long).repeat_interleave(n),
        "index": torch.tensor([int(item["index"]) for item in batch], dtype=torch.long).repeat_interleave(n),
        "failures": [path for item in batch for path in item["failures"]],
    }
