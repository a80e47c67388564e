"""Top-down keypoint data (COCO keypoints JSON): one sample per person box, from the ground truth or (evaluation, as
in the paper) a detection-results JSON, with mmpose's training augmentation (flip, half body, scale, rotation).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from ..dense.coco import load_coco_split
from ..dense.io import BadSample, read_image, report_bad, resolve_path
from ..dense.synthetic import COCO_FLIP_PAIRS
from .decoding import affine_matrix, apply_affine, box_to_center_scale, gaussian_targets, normalize_crop, warp

__all__ = ["PoseDataset", "pose_collate"]

_logger = logging.getLogger("uniformer.tasks.pose")


class PoseDataset(Dataset):
    """Person crops of one split: training samples `{"img": 3×H×W, "target": K×h×w, "target_weight": K, "index"}`,
    evaluation samples `{"img", "center", "scale", "score", "area", "image_id", "index"}`; None if unreadable."""

    def __init__(self, cfg: Mapping, split: str = "train", train: bool | None = None):
        d = cfg["data"]
        self.cfg, self.data, self.split = cfg, d, split
        self.train = split == "train" if train is None else train
        self.num_joints = int(d["num_joints"])
        self.flip_pairs = [tuple(p) for p in (d["flip_pairs"] or COCO_FLIP_PAIRS)]
        self.input_size = tuple(int(v) for v in d["input_size"])  # (width, height)
        self.heatmap_size = tuple(int(v) for v in d.get("heatmap_size") or (s // 4 for s in self.input_size))
        self.aspect = self.input_size[0] / self.input_size[1]
        section, self.index = load_coco_split(cfg, split, "keypoints", logger=_logger, need_keypoints=self.num_joints)
        self.ann_file = self.index.path
        self.rejected = list(self.index.rejected)
        detections = section.get("detections")
        use_gt = self.train or not detections or cfg.get("test", {}).get("use_gt_bbox", False)
        self.samples = self._from_ground_truth() if use_gt else self._from_detections(resolve_path(cfg, detections))
        if not self.samples:
            raise ValueError(f"{self.ann_file}: no usable person boxes for data.{split}")

    def _from_ground_truth(self) -> list[dict]:
        """One sample per annotated person with a labelled joint, its box cleaned as mmpose does (clipped to
        the image, width and height less one pixel)."""
        out = []
        for iid, anns in self.index.annotations.items():
            im = self.index.images[iid]
            for ann in anns:
                kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
                if kp[:, 2].max() <= 0:
                    continue  # no labelled joint (as mmpose, for training and testing)
                x, y, w, h = (float(v) for v in ann["bbox"])
                x1, y1 = max(0.0, x), max(0.0, y)
                x2, y2 = min(im["width"] - 1.0, x1 + max(0.0, w - 1)), min(im["height"] - 1.0, y1 + max(0.0, h - 1))
                if x2 <= x1 or y2 <= y1:
                    continue
                center, scale = box_to_center_scale((x1, y1, x2 - x1, y2 - y1), self.aspect, self.data["bbox_padding"])
                out.append({"image_id": iid, "file": im["file"], "center": center, "scale": scale,
                            "joints": kp[:, :2], "visible": (kp[:, 2] > 0).astype(np.float32), "score": 1.0,
                            "ann_id": ann.get("id")})
        return out

    def _from_detections(self, path) -> list[dict]:
        if not path.is_file():
            raise FileNotFoundError(f"detection results {path} do not exist")
        try:
            dets = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        thr = float(self.data["det_bbox_thr"])
        out = []
        for i, det in enumerate(dets):
            iid, bbox = (det.get("image_id"), det.get("bbox")) if isinstance(det, Mapping) else (None, None)
            if iid not in self.index.images:
                problem = f"references image {iid}, which is not usable"
            elif det.get("category_id", 1) != 1 or float(det.get("score", 1.0)) < thr:
                continue
            elif not isinstance(bbox, list) or len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
                problem = f"(image {iid}) has an empty or malformed bbox {bbox!r}"
            else:
                center, scale = box_to_center_scale(bbox, self.aspect, self.data["bbox_padding"])
                out.append({"image_id": iid, "file": self.index.images[iid]["file"], "center": center, "scale": scale,
                            "joints": np.zeros((self.num_joints, 2)), "visible": np.zeros(self.num_joints, np.float32),
                            "score": float(det.get("score", 1.0)), "ann_id": None})
                continue
            self.rejected.append(f"{path.name}: detection {i} {problem}")
            report_bad(_logger, self.rejected[-1])
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        s = self.samples[index]
        try:
            image = read_image(s["file"], s["image_id"])
        except BadSample as e:
            report_bad(_logger, str(e))
            return None
        d = self.data
        center, scale = s["center"].copy(), s["scale"].copy()
        joints, visible = s["joints"].copy(), s["visible"].copy()
        rotation = 0.0
        if self.train:
            rng = np.random.default_rng(np.random.randint(0, 2**31))
            w = image.shape[1]
            if rng.random() < float(d["flip_prob"]):
                image = image[:, ::-1]
                joints[:, 0] = w - 1 - joints[:, 0]
                for a, b in self.flip_pairs:
                    joints[[a, b]] = joints[[b, a]]
                    visible[[a, b]] = visible[[b, a]]
                center[0] = w - 1 - center[0]
            if visible.sum() > int(d["half_body_min_joints"]) and rng.random() < float(d["half_body_prob"]):
                half = self._half_body(joints, visible, rng)
                if half is not None:
                    center, scale = half
            sf, rf = float(d["scale_factor"]), float(d["rot_factor"])
            scale = scale * np.clip(rng.normal() * sf + 1, 1 - sf, 1 + sf)
            if rng.random() <= float(d["rot_prob"]):
                rotation = float(np.clip(rng.normal() * rf, -2 * rf, 2 * rf))
        crop = warp(np.ascontiguousarray(image), center, scale, rotation, self.input_size)
        img = normalize_crop(crop, d["mean"], d["std"])
        if not self.train:
            return {"img": img, "center": center, "scale": scale, "score": np.float32(s["score"]),
                    "image_id": s["image_id"], "area": scale[0] * scale[1], "index": index}
        pts = apply_affine(joints, affine_matrix(center, scale, rotation, self.input_size))
        stride = self.input_size[0] / self.heatmap_size[0]
        target, weight = gaussian_targets(pts, visible, self.heatmap_size, stride, float(d["sigma"]))
        return {"img": img, "target": torch.from_numpy(target), "target_weight": torch.from_numpy(weight),
                "index": index}

    def _half_body(self, joints: np.ndarray, visible: np.ndarray, rng: np.random.Generator):
        upper_ids = set(self.data["upper_body_ids"])
        upper = [j for j in range(self.num_joints) if visible[j] > 0 and j in upper_ids]
        lower = [j for j in range(self.num_joints) if visible[j] > 0 and j not in upper_ids]
        chosen = upper if (rng.random() < 0.5 and len(upper) > 2) else (lower if len(lower) > 2 else upper)
        if len(chosen) < 2:
            return None
        pts = joints[chosen]
        lo, hi = pts.min(0), pts.max(0)
        w, h = hi - lo
        center = pts.mean(0)
        if w > self.aspect * h:
            h = w / self.aspect
        else:
            w = h * self.aspect
        return center, np.array([w, h]) * 1.5


def pose_collate(samples: list) -> dict | None:
    """Stack samples (tensors stacked, the rest listed), dropping unreadable ones (None if none is left)."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    columns = {key: [s[key] for s in samples] for key in samples[0]}
    return {key: torch.stack(v) if isinstance(v[0], torch.Tensor) else v for key, v in columns.items()}
