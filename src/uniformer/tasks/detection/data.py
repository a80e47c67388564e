"""COCO instance data, resized as the original mmdet pipeline does: training images flipped, optionally cropped
(the 3×+MS recipe's DETR-style policy) and resized to a short side from `data.train_scales`; evaluation images
as read (`detector.detect` resizes them). Crowd annotations and training images without annotations are left out.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..dense.coco import annotation_mask, load_coco_split
from ..dense.io import BadSample, read_image, report_bad
from ..segmentation.data import rescale_size

__all__ = ["DetDataset", "det_collate", "resize_keep_ratio"]

_logger = logging.getLogger("uniformer.tasks.detection")


def resize_keep_ratio(image: np.ndarray, scale: Sequence[int]) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """mmcv's `imrescale` with OpenCV bilinear: the H×W×C uint8 `image` resized to fit `scale`, and the scale factor
    (w, h, w, h) = (new width / width, new height / height, ...) as float32 values."""
    h, w = image.shape[:2]
    new_h, new_w = rescale_size(h, w, scale)
    resized = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    factor = np.array([new_w / w, new_h / h, new_w / w, new_h / h], np.float32)
    return resized, tuple(float(f) for f in factor)


class DetDataset(Dataset):
    """One split of a COCO instances file: `(image, target)` with target `{"boxes" N×4 xyxy, "labels" 1..K, "masks"
    N×h×w uint8 (with masks), "image_id"}`; training images are resized 3×h×w float 0..255 tensors, evaluation
    images the original H×W×3 uint8 arrays. None if unreadable."""

    def __init__(self, cfg: Mapping, split: str = "train", train: bool | None = None):
        d = cfg["data"]
        self.cfg, self.data, self.split = cfg, d, split
        self.train = split == "train" if train is None else train
        self.with_masks = bool(cfg["model"]["with_masks"])
        _, self.index = load_coco_split(cfg, split, "instances", logger=_logger, need_masks=self.with_masks)
        self.ann_file = self.index.path
        self.rejected = list(self.index.rejected)
        self.cat_ids = self.index.cat_ids
        self.classes = [c.get("name", str(c["id"])) for c in self.index.categories]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.image_ids = [i for i in sorted(self.index.images) if not self.train or self.index.annotations[i]]
        if not self.image_ids:
            raise ValueError(f"{self.ann_file}: no usable images for data.{split}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        iid = self.image_ids[index]
        im = self.index.images[iid]
        try:
            image = read_image(im["file"], iid)
            if image.shape[:2] != (im["height"], im["width"]):
                raise BadSample(f"image {iid} ({im['file']}) is {image.shape[1]}x{image.shape[0]}, the annotation "
                                f"file says {im['width']}x{im['height']}")
        except BadSample as e:
            report_bad(_logger, str(e))
            return None
        anns = self.index.annotations[iid]
        h, w = image.shape[:2]
        boxes = np.array([a["box"] for a in anns], np.float32).reshape(-1, 4)
        labels = np.array([self.label_of[a["category_id"]] for a in anns], np.int64)
        masks = np.stack([annotation_mask(a, h, w) for a in anns]) if (self.with_masks and anns) else \
            np.zeros((0, h, w), np.uint8)
        if self.train:
            rng = np.random.default_rng(np.random.randint(0, 2**31))
            if rng.random() < float(self.data["flip_prob"]):
                image = image[:, ::-1]
                masks = masks[:, :, ::-1]
                boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
            if self.data["crop_policy"] == "detr" and rng.random() < 0.5:
                image, boxes, labels, masks = self._detr_crop(image, boxes, labels, masks, rng)
            short = int(rng.choice([int(v) for v in self.data["train_scales"]]))
            image, boxes, masks = self._resize(image, boxes, masks, (short, int(self.data["max_size"])))
            img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        else:
            img = np.ascontiguousarray(image)
        target = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes)).float().reshape(-1, 4),
                  "labels": torch.from_numpy(labels), "image_id": iid}
        if self.with_masks:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks))
        return img, target

    @staticmethod
    def _resize(image: np.ndarray, boxes: np.ndarray, masks: np.ndarray, scale: Sequence[int]):
        """mmdet's `Resize(keep_ratio=True)`: image bilinear, boxes by the scale factor (clipped), masks nearest."""
        image, factor = resize_keep_ratio(image, scale)
        h, w = image.shape[:2]
        boxes = (boxes * np.array(factor, np.float32)).clip(0, np.array([w, h, w, h], np.float32))
        masks = np.array([cv2.resize(np.ascontiguousarray(m), (w, h), interpolation=cv2.INTER_NEAREST)
                          for m in masks], np.uint8).reshape(-1, h, w)
        return image, boxes, masks

    def _detr_crop(self, image, boxes, labels, masks, rng: np.random.Generator):
        """Resize-to-(400|500|600) then crop 384..600 (absolute range), expressed in original pixels."""
        h, w = image.shape[:2]
        short = float(rng.choice(self.data["crop_scales"]))
        f = min(short / min(h, w), self.data["max_size"] / max(h, w))
        lo, hi = self.data["crop_size"]

        def side(n: int) -> int:  # mmdet: randint(min(n', lo), min(n', hi)) in resized pixels n' = n * f
            resized = int(n * f)
            return min(n, max(1, round(int(rng.integers(min(resized, lo), min(resized, hi) + 1)) / f)))

        ch, cw = side(h), side(w)
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = image[y0:y0 + ch, x0:x0 + cw]
        masks = masks[:, y0:y0 + ch, x0:x0 + cw]
        boxes = (boxes - np.array([x0, y0, x0, y0], np.float32)).clip(0, np.array([cw, ch, cw, ch], np.float32))
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        if self.with_masks:
            keep &= masks.any((1, 2))
        return image, boxes[keep], labels[keep], masks[keep]


def det_collate(samples: list):
    """Lists of images and targets (sizes differ), dropping unreadable samples; None when none is left."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    return [s[0] for s in samples], [s[1] for s in samples]
