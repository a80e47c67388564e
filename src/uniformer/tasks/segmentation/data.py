"""Semantic-segmentation data: the ADE20K layout (label 0 ignored, `reduce_zero_label`) or image and mask folders
whose files share their stems, with the original ADE20K recipes' training augmentation. Pairs missing a side are
reported at start-up and left out; unreadable files and out-of-range labels are reported when drawn.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..dense.io import IMAGE_SUFFIXES, BadSample, read_image, read_label_map, report_bad, resolve_path

__all__ = ["SegDataset", "read_classes", "resize_keep_ratio", "rescale_size", "scaled_size", "seg_collate",
           "photometric_distortion"]

_logger = logging.getLogger("uniformer.tasks.segmentation")


def _read_lines(cfg: Mapping, name: str, what: str) -> list[str]:
    """The non-blank lines, stripped, of the text file `name` (resolved against the recipe); `what` names it."""
    path = resolve_path(cfg, name)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_classes(data_cfg: Mapping, cfg: Mapping | None = None) -> list[str]:
    """Class names from `data.classes` (a list, or a text file with one name per line), else
    `class_<i>` for `data.num_classes` classes."""
    classes = data_cfg.get("classes")
    if isinstance(classes, str):
        names = _read_lines(cfg or {"data": data_cfg}, classes, "data.classes: class list")
    elif classes:
        names = [str(c) for c in classes]
    elif data_cfg.get("num_classes"):
        names = [f"class_{i}" for i in range(int(data_cfg["num_classes"]))]
    else:
        raise ValueError("data: give the class names (data.classes) or data.num_classes")
    if data_cfg.get("num_classes") and len(names) != int(data_cfg["num_classes"]):
        raise ValueError(f"data.classes lists {len(names)} names but data.num_classes is {data_cfg['num_classes']}")
    return names


# --- geometric and photometric transforms (numpy) ----------------------------------------------------
def scaled_size(img_scale: Sequence[float], ratio: float) -> tuple[int, int]:
    """`img_scale` times `ratio`, truncated to integers (as mmseg's multi-scale test and ratio-range resize)."""
    return int(img_scale[0] * ratio), int(img_scale[1] * ratio)


def rescale_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """(new_height, new_width) of a keep-ratio resize: the long side fits max(scale), the short side
    min(scale), each side rounded half up (mmcv's `rescale_size`)."""
    f = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * f + 0.5)), max(1, int(width * f + 0.5))


def _cv2_resize(array: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    if array.shape[:2] == (height, width):
        return array
    return cv2.resize(np.ascontiguousarray(array), (width, height),
                      interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def resize_keep_ratio(img: np.ndarray, scale: Sequence[float], label: np.ndarray | None = None,
                      size_divisor: int | None = None):
    """mmcv's imrescale (OpenCV bilinear, nearest for the label map) to fit `scale`; `size_divisor` then resizes
    each side up to its next multiple (Semantic FPN's `AlignResize` test transform: 512×683 → 512×704)."""
    nh, nw = rescale_size(*img.shape[:2], scale)
    out = _cv2_resize(img, nh, nw)
    if size_divisor:
        ah, aw = (-(-n // int(size_divisor)) * int(size_divisor) for n in (nh, nw))
        out = _cv2_resize(out, ah, aw)
    if label is None:
        return out
    lab = _cv2_resize(label.astype(np.int32), nh, nw, nearest=True)
    if size_divisor:
        lab = _cv2_resize(lab, *out.shape[:2], nearest=True)
    return out, lab.astype(np.int64)


def _random_crop(img: np.ndarray, label: np.ndarray, size, cat_max_ratio: float, ignore_index: int,
                 rng: np.random.Generator):
    ch, cw = size
    h, w = label.shape

    def window():
        return int(rng.integers(0, max(h - ch, 0) + 1)), int(rng.integers(0, max(w - cw, 0) + 1))

    y, x = window()
    if cat_max_ratio < 1.0:
        for _ in range(10):  # as mmseg: re-draw while one class covers more than the ratio
            crop = label[y:y + ch, x:x + cw]
            _, counts = np.unique(crop[crop != ignore_index], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y, x = window()
    return img[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


def photometric_distortion(img: np.ndarray, rng: np.random.Generator, brightness: int = 32,
                           contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue: int = 18) -> np.ndarray:
    """Random brightness, contrast, saturation and hue changes (each with probability 0.5; contrast
    before or after the colour changes), as mmseg's PhotoMetricDistortion. `hue` is in OpenCV's
    0..180 degree scale."""
    out = img.astype(np.float32)
    if rng.random() < 0.5:
        out = (out + rng.uniform(-brightness, brightness)).clip(0, 255)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        out = (out * rng.uniform(*contrast)).clip(0, 255)
    do_sat, do_hue = rng.random() < 0.5, rng.random() < 0.5
    if do_sat or do_hue:
        hsv = np.asarray(Image.fromarray(out.astype(np.uint8)).convert("HSV")).astype(np.float32)
        if do_sat:
            hsv[..., 1] = (hsv[..., 1] * rng.uniform(*saturation)).clip(0, 255)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-hue, hue + 1) * 255.0 / 180.0) % 256
        out = np.asarray(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        out = (out * rng.uniform(*contrast)).clip(0, 255)
    return out.astype(np.uint8)


def normalize(img: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


# --- datasets ----------------------------------------------------------------------------------------
def _split_dirs(data: Mapping, split: str) -> tuple[str, str]:
    section = data.get(split) or {}
    if data["format"] == "ade20k":
        folder = {"train": "training", "val": "validation"}.get(split, split)
        return section.get("images") or f"images/{folder}", section.get("masks") or f"annotations/{folder}"
    if not section.get("images") or not section.get("masks"):
        raise ValueError(f"data.{split}: give 'images' and 'masks' folders for the folder layout")
    return section["images"], section["masks"]


class SegDataset(Dataset):
    """Image / label-map pairs of one split: training samples augmented (`{"img": 3×h×w normalised, "seg": h×w int64,
    "id"}`), others as read (`{"image": H×W×3 uint8, "seg", "id", "path"}`); None (reported) if unreadable."""

    def __init__(self, cfg: Mapping, split: str = "train", train: bool | None = None):
        data = cfg["data"]
        if data["format"] not in ("ade20k", "folder"):
            raise ValueError(f"data.format={data['format']!r}: expected 'ade20k' or 'folder'")
        self.cfg, self.data, self.split = cfg, data, split
        self.train = split == "train" if train is None else train
        self.classes = read_classes(data, cfg)
        self.num_classes = len(self.classes)
        self.ignore_index = int(data["ignore_index"])
        reduce = data.get("reduce_zero_label")
        self.reduce_zero_label = data["format"] == "ade20k" if reduce is None else bool(reduce)
        if self.reduce_zero_label and split == "train":
            _logger.info("data.reduce_zero_label: label 0 of the label maps is ignored and labels 1..%d are classes "
                         "0..%d (%s)", self.num_classes, self.num_classes - 1,
                         "the ADE20K convention" if reduce is None else "set in the recipe")
        img_dir, mask_dir = (resolve_path(cfg, p) for p in _split_dirs(data, split))
        for what, d in (("images", img_dir), ("masks", mask_dir)):
            if not d.is_dir():
                raise FileNotFoundError(f"data.{split}.{what}: folder {d} does not exist")
        suffix = data.get("img_suffix")
        images = {p.stem: p for p in sorted(img_dir.iterdir())
                  if (p.suffix.lower() == suffix.lower() if suffix else p.suffix.lower() in IMAGE_SUFFIXES)}
        masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() == data["mask_suffix"].lower()}
        split_file = (data.get(split) or {}).get("split")
        stems = _read_lines(cfg, split_file, f"data.{split}.split: list") if split_file else sorted({*images, *masks})
        self.samples: list[tuple[str, Path, Path]] = []
        self.rejected: list[str] = []
        for stem in stems:
            if stem not in images:
                self.rejected.append(f"sample {stem!r}: its image is missing from {img_dir}")
            elif stem not in masks:
                self.rejected.append(f"sample {stem!r}: its label map is missing from {mask_dir}")
            else:
                self.samples.append((stem, images[stem], masks[stem]))
        for what in self.rejected:
            report_bad(_logger, what)
        if not self.samples:
            raise ValueError(f"data.{split}: no image / label-map pairs found in {img_dir} and {mask_dir}")

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image and its label map with the dataset's label convention applied (BadSample if unusable)."""
        stem, img_path, mask_path = self.samples[index]
        img = read_image(img_path, stem)
        seg = read_label_map(mask_path, stem)
        if seg.ndim != 2 or seg.shape != img.shape[:2]:
            raise BadSample(f"sample {stem!r}: label map {mask_path} is {seg.shape}, image {img_path} is "
                            f"{img.shape[:2]}")
        if self.reduce_zero_label:  # 0 and the ignore index stay ignored, the rest shift by -1
            seg = np.where((seg == 0) | (seg == self.ignore_index), self.ignore_index, seg - 1)
        bad = np.unique(seg[(seg != self.ignore_index) & ((seg < 0) | (seg >= self.num_classes))])
        if len(bad):
            raise BadSample(f"sample {stem!r}: label map {mask_path} has values {bad[:8].tolist()} outside the "
                            f"{self.num_classes} classes (ignore index {self.ignore_index})")
        return img, seg

    def __getitem__(self, index: int):
        stem, img_path, _ = self.samples[index]
        try:
            img, seg = self.load(index)
        except BadSample as e:
            report_bad(_logger, str(e))
            return None
        if not self.train:
            return {"image": img, "seg": seg, "id": stem, "path": str(img_path)}
        return self.augment(img, seg, stem)

    def augment(self, img: np.ndarray, seg: np.ndarray, stem: str) -> dict:
        d = self.data
        rng = np.random.default_rng(np.random.randint(0, 2**31))
        ratio = rng.uniform(*(d["ratio_range"] or (1.0, 1.0)))
        img, seg = resize_keep_ratio(img, scaled_size(d["img_scale"], ratio), seg)
        crop = d["crop_size"]
        img, seg = _random_crop(img, seg, crop, float(d["cat_max_ratio"]), self.ignore_index, rng)
        if rng.random() < float(d["flip_prob"]):
            img, seg = img[:, ::-1], seg[:, ::-1]
        if d["photometric"]:
            img = photometric_distortion(img, rng)
        x = normalize(img, d["mean"], d["std"])
        y = torch.from_numpy(np.ascontiguousarray(seg))
        pad = (0, max(crop[1] - x.shape[2], 0), 0, max(crop[0] - x.shape[1], 0))  # bottom/right up to the crop size
        x, y = F.pad(x, pad), F.pad(y, pad, value=self.ignore_index)  # zeros in the image, ignore in the labels
        return {"img": x, "seg": y, "id": stem}


def seg_collate(samples: list) -> dict | None:
    """Stack training samples, dropping the unreadable ones (None when none is left)."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    return {"img": torch.stack([s["img"] for s in samples]), "seg": torch.stack([s["seg"] for s in samples]),
            "ids": [s["id"] for s in samples]}
