"""Datasets for video and image classification, their builder and their collate function.

Every item is a dict::

    {"input": Tensor, "label": int, "index": int, "failures": list[str]}

``input`` is ``(N, C, T, H, W)`` for training with ``data.num_sample = N > 1`` (repeated augmentation:
the clip is decoded once and augmented N times independently; the item then also carries
``"num_sample": N`` and :func:`collate` flattens the clips into the batch, labels and indices
repeated, so a batch of B items holds B x N clips, as the original's ``multiple_samples_collate``),
``(C, T, H, W)`` for video train/val, ``(V, C, T, H, W)`` for video test
(``V = test_clips * test_crops``, clip-major: view ``v`` is clip ``v // test_crops``, crop
``v % test_crops``), ``(C, H, W)`` for image train/val and ``(V, C, H, W)`` for image test
(``V = test_crops``).  The test split always carries the V axis, even when ``V == 1``.

A sample that cannot be loaded (corrupt, unreadable, truncated or too short) never stops
training and never becomes a zero tensor: it is replaced by another sample chosen by a
generator seeded with ``(seed, index, attempt)`` (so the replacement is reproducible),
and its path is appended to the item's ``failures``.  ``index`` and ``label`` then belong
to the sample actually returned.  Reporting through the item (rather than through
dataset state) is what makes failures visible from DataLoader worker processes;
:func:`collate` concatenates them per batch.

Training randomness (temporal offset, crop, flip, RandAugment, erasing) is drawn from a
per-item ``numpy.random.Generator`` seeded from ``(data.seed, index, attempt)`` and one draw of
torch's RNG.  The runner sets torch's RNG for every sample from the recipe's seed, the epoch and
the sample's place in it (``uniformer.engine.loaders.SeededDataset``), so augmentations change
with ``data.seed`` and between epochs, and are the same for any number of workers.  (A plain
DataLoader seeds torch's RNG per worker from the main process's seed instead.)  Val and test
items are fully deterministic.
"""

from __future__ import annotations

import logging
import os
import warnings
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

    def __init__(
        self,
        cfg: DataConfig,
        split: str,
        samples: list[tuple[str, int]],
        classes: list[str],
        source: str,
        num_skipped_missing: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not samples:
            raise ValueError(f"{source}: no samples for split {split!r}")
        self.cfg = cfg
        self.split = split
        self.samples = samples
        self.classes = list(classes)
        self.source = source
        self.num_skipped_missing = num_skipped_missing
        self.seed = cfg.seed
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
        return 1

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, classes={self.num_classes}, "
            f"source={self.source!r})"
        )

    def _item_rng(self, index: int, attempt: int) -> np.random.Generator | None:
        if self.split != "train":
            return None
        entropy = int(torch.randint(0, 2**62, (1,)).item())
        return np.random.default_rng([self.seed, index, attempt, entropy])

    def replacement_index(self, index: int, attempt: int) -> int:
        """Deterministic stand-in for sample ``index`` after its ``attempt``-th failure (never ``index`` itself)."""
        n = len(self.samples)
        if n < 2:
            raise SampleLoadError(f"{self.source}: the only sample failed to load and there is nothing to replace it")
        r = int(np.random.default_rng([self.seed, index, attempt, 7919]).integers(n - 1))
        return r if r < index else r + 1

    def load(self, path: str, rng: np.random.Generator | None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

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
        raise SampleLoadError(
            f"{self.source}: {len(failures)} consecutive samples failed to load starting at index {index} "
            f"({failures}); last error: {last_error}"
        )


class VideoClassificationDataset(ClassificationDataset):
    """Videos decoded with PyAV, sampled densely or uniformly, transformed per clip."""

    is_video = True

    @property
    def num_views(self) -> int:
        return self.cfg.test_clips * self.cfg.test_crops if self.split == "test" else 1

    def clip_indices(self, num_video_frames: int, rng: np.random.Generator | None) -> np.ndarray:
        """``(clips, num_frames)`` frame indices this split uses for a video of ``num_video_frames`` frames."""
        cfg = self.cfg
        return sample_clips(
            num_video_frames,
            sampling=cfg.sampling,
            num_frames=cfg.num_frames,
            stride=cfg.stride,
            rng=rng,
            num_clips=cfg.test_clips if self.split == "test" else 1,
        )

    def frame_indices(self, num_video_frames: int, fps: float, rng: np.random.Generator | None) -> np.ndarray:
        """``(clips, num_frames)`` decoded-frame indices, after the ``target_fps`` re-numbering if configured.

        With ``target_fps`` the sampling rule runs over the images ``ffmpeg -r target_fps`` would
        extract and each image is mapped to the decoded frame it shows, so a webm read directly
        gives the frames of the original's 30 fps frame folders.
        """
        if self.cfg.target_fps is None:
            return self.clip_indices(num_video_frames, rng)
        shown = resampled_frame_map(num_video_frames, fps, self.cfg.target_fps)
        return shown[self.clip_indices(len(shown), rng)]

    def load(self, path: str, rng: np.random.Generator | None) -> torch.Tensor:
        with VideoReader(path, threads=self.cfg.decode_threads) as reader:
            if reader.num_frames < self.cfg.min_video_frames:
                minimum = self.cfg.min_video_frames
                raise VideoDecodeError(f"{path}: video too short ({reader.num_frames} frames < {minimum=})")
            clips = self.frame_indices(reader.num_frames, reader.fps, rng)
            frames = reader.get_frames(clips.reshape(-1))
        return self._augmented(frames, len(clips), rng)  # decoded once, augmented num_sample times for training


def read_frame(path: str) -> np.ndarray:
    """One frame image as ``(H, W, 3)`` uint8 RGB (the transform reverses it for ``channel_order: BGR``)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise SampleLoadError(f"{path}: frame image not found") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SampleLoadError(f"{path}: cannot read frame image ({type(exc).__name__}: {exc})") from exc


class FrameFolderDataset(VideoClassificationDataset):
    """Videos stored as folders of frame images (``frame_template``, 1-based), the original's SSv1/SSv2 format.

    Each sample's frame count comes from the split list (``folder num_frames label``), as in the
    original ``Sth`` dataset; frame ``i`` (0-based) of a clip is the image numbered ``i + 1``.
    """

    def __init__(self, *args, frame_counts: Mapping[str, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frame_counts = dict(frame_counts)

    def load(self, path: str, rng: np.random.Generator | None) -> torch.Tensor:
        n = self.frame_counts[path]
        if n < self.cfg.min_video_frames:
            minimum = self.cfg.min_video_frames
            raise SampleLoadError(f"{path}: video too short ({n} frames < {minimum=})")
        clips = self.clip_indices(n, rng)
        cache: dict[int, np.ndarray] = {}
        frames = []
        for i in clips.reshape(-1).tolist():
            if i not in cache:
                cache[i] = read_frame(os.path.join(path, self.cfg.frame_template.format(i + 1)))
            frames.append(cache[i])
        shapes = {f.shape for f in cache.values()}
        if len(shapes) != 1:
            raise SampleLoadError(f"{path}: frame images differ in size {sorted(shapes)}")
        return self._augmented(np.stack(frames), len(clips), rng)  # read once, num_sample clips for training


class ImageClassificationDataset(ClassificationDataset):
    """Images loaded with PIL (converted to RGB) and transformed like one-frame clips."""

    @property
    def num_views(self) -> int:
        return self.cfg.test_crops if self.split == "test" else 1

    def load(self, path: str, rng: np.random.Generator | None) -> torch.Tensor:
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except LOAD_ERRORS as exc:
            raise SampleLoadError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
        x = self._augmented(array[None], 1, rng)
        return x.squeeze(-3)  # drop the T axis


# ---------------------------------------------------------------------- builder
def _list_key(split: str) -> str:
    return f"{split}_list"


def _split_value(cfg: DataConfig, prefix: str, suffix: str, split: str) -> tuple[str, str | None]:
    """Config key and value for ``split`` (test falls back to val)."""
    key = f"{prefix}{split}{suffix}"
    value = getattr(cfg, key)
    if value is None and split == "test":
        key = f"{prefix}val{suffix}"
        value = getattr(cfg, key)
    return key, value


def _build_from_lists(cfg: DataConfig, split: str, cls: type[ClassificationDataset]) -> ClassificationDataset:
    key, value = _split_value(cfg, "", "_list", split)
    if value is None:
        raise ValueError(f"data config: '{key}' is required for split {split!r} with format {cfg.format!r}")
    list_path = resolve_file(value, cfg.root, key)
    entries = read_list_file(list_path)
    if cfg.class_names is not None:
        names_path = resolve_file(cfg.class_names, cfg.root, "class_names")
        classes = read_class_names(names_path)
        if cfg.num_classes is not None and cfg.num_classes != len(classes):
            raise ValueError(f"data config: class_names {names_path} lists {len(classes)} classes but num_classes "
                             f"is {cfg.num_classes}")
    else:
        # Infer from every configured list so all splits agree on the class set.
        all_entries: list[list[Entry]] = [entries]
        sources = [str(list_path)]
        for other in SPLITS:
            other_value = getattr(cfg, _list_key(other))
            if other_value is None or other_value == value:
                continue
            try:
                other_path = resolve_file(other_value, cfg.root, _list_key(other))
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
    key, value = _split_value(cfg, "", "_list", split)
    if value is None:
        raise ValueError(f"data config: '{key}' is required for split {split!r} with format 'frame_folder'")
    list_path = resolve_file(value, cfg.root, key)
    entries, counts = read_frame_list(list_path)
    if cfg.class_names is not None:
        classes = read_class_names(resolve_file(cfg.class_names, cfg.root, "class_names"))
    else:
        classes = infer_classes([entries], cfg.num_classes)
    labels = resolve_labels(entries, classes, str(list_path), cfg.num_classes)
    samples = [(join_root(e.path, cfg.root), lab) for e, lab in zip(entries, labels)]
    missing = [i for i, (p, _) in enumerate(samples) if not os.path.isdir(p)]
    if missing and not cfg.skip_missing:
        listing = "\n  ".join(f"{entries[i].where}: {samples[i][0]}" for i in missing)
        raise FileNotFoundError(
            f"{list_path}: {len(missing)} of {len(samples)} listed frame folders are missing:\n  {listing}\n"
            "Fix the paths (and 'root') or set skip_missing: true in the data config to drop these entries."
        )
    if missing:
        warnings.warn(f"{list_path}: skipping {len(missing)} of {len(samples)} entries whose frame folders are "
                      "missing", stacklevel=2)
    dropped = set(missing)
    keep = [i for i in range(len(samples)) if i not in dropped]
    counts_by_path = {samples[i][0]: counts[i] for i in keep}
    return FrameFolderDataset(cfg, split, [samples[i] for i in keep], classes, str(list_path), len(missing),
                              frame_counts=counts_by_path)


def _build_sthv2(cfg: DataConfig, split: str) -> ClassificationDataset:
    if cfg.labels_file is None:
        raise ValueError("data config: 'labels_file' is required for format 'sthv2'")
    labels_path = resolve_file(cfg.labels_file, cfg.root, "labels_file")
    classes = read_sthv2_labels(labels_path)
    if cfg.class_names is not None:
        names = read_class_names(resolve_file(cfg.class_names, cfg.root, "class_names"))
        if len(names) != len(classes):
            raise ValueError(
                f"data config: class_names has {len(names)} names but labels_file {labels_path} has {len(classes)}"
            )
    key, value = _split_value(cfg, "", "_annotations", split)
    if value is None:
        raise ValueError(f"data config: '{key}' is required for split {split!r} with format 'sthv2'")
    ann_path = resolve_file(value, cfg.root, key)
    samples, wheres = read_sthv2_annotations(ann_path, classes, cfg.root, cfg.video_ext)
    samples, dropped = check_missing(samples, wheres, str(ann_path), skip_missing=cfg.skip_missing)
    display = names if cfg.class_names is not None else classes
    return VideoClassificationDataset(cfg, split, samples, display, str(ann_path), dropped)


def _build_image_folder(cfg: DataConfig, split: str) -> ClassificationDataset:
    key, value = _split_value(cfg, "", "_dir", split)
    default = "val" if split == "test" else split
    folder = Path(join_root(value if value is not None else default, cfg.root))
    classes = None
    if cfg.class_names is not None:
        classes = read_class_names(resolve_file(cfg.class_names, cfg.root, "class_names"))
    elif split != "train":
        _, train_value = _split_value(cfg, "", "_dir", "train")
        train_folder = Path(join_root(train_value if train_value is not None else "train", cfg.root))
        if train_folder.is_dir():  # use the training classes so that indices agree across splits
            classes = sorted(d.name for d in train_folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folder.is_dir():
        raise FileNotFoundError(f"data config: {key} folder {folder} does not exist (format 'image_folder')")
    samples, classes = scan_image_folder(folder, classes)
    return ImageClassificationDataset(cfg, split, samples, classes, str(folder))


def build_dataset(cfg: Mapping[str, Any] | DataConfig, split: str) -> ClassificationDataset:
    """Build the dataset for ``split`` ("train" | "val" | "test") from the ``data:`` config section.

    See :mod:`uniformer.data.config` for the keys.  Raises ``ValueError`` / ``FileNotFoundError``
    naming the offending key or file; all missing sample files are reported in one error.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    c = parse_data_config(cfg)
    if c.format == "video_list":
        return _build_from_lists(c, split, VideoClassificationDataset)
    if c.format == "image_list":
        return _build_from_lists(c, split, ImageClassificationDataset)
    if c.format == "sthv2":
        return _build_sthv2(c, split)
    if c.format == "frame_folder":
        return _build_frame_folder(c, split)
    return _build_image_folder(c, split)


def collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack items into ``{"input": (B, ...), "label": (B,) long, "index": (B,) long, "failures": [paths]}``.

    Items of ``num_sample = N`` clips give ``B x N`` rows, item by item (the N clips of an item are adjacent),
    each with its item's label and index.
    """
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


__all__ = [
    "ClassificationDataset",
    "FrameFolderDataset",
    "ImageClassificationDataset",
    "VideoClassificationDataset",
    "VideoDecodeError",
    "build_dataset",
    "collate",
]
