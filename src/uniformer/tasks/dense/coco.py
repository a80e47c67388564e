"""Reading COCO-style JSON (instances and person keypoints) with every bad entry (missing image file, duplicate
id, unknown image or category, degenerate box after clipping, bad polygon / RLE / keypoint list) reported by its
id and left out; crowd annotations are kept apart (`crowd`), as training ignores them. COCOeval helpers."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .io import report_bad, resolve_path

__all__ = ["CocoIndex", "load_coco", "load_coco_split", "annotation_mask", "coco_ground_truth", "encode_mask",
           "instance_results", "evaluate_instances", "evaluate_coco", "INSTANCE_STATS"]

INSTANCE_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class CocoIndex:
    """The usable content of a COCO JSON file."""

    path: Path
    images: dict[int, dict]  # id -> {"id", "file", "width", "height", "file_name"}
    annotations: dict[int, list[dict]]  # image id -> usable non-crowd annotations (with "box": x1, y1, x2, y2)
    crowd: dict[int, list[dict]]
    categories: list[dict]
    rejected: list[str] = field(default_factory=list)

    @property
    def cat_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]


def _box(ann: Mapping, width: float, height: float) -> tuple[float, float, float, float] | str:
    bbox = ann.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return f"bbox {bbox!r} is not [x, y, w, h]"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return f"bbox {bbox!r} is not numeric"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"bbox {bbox!r} is not finite"
    if w <= 0 or h <= 0:
        return f"bbox {bbox!r} is empty"
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width, x + w), min(height, y + h)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return f"bbox {bbox!r} is degenerate inside the {int(width)}x{int(height)} image"
    return x1, y1, x2, y2


def _check_segmentation(seg, width: int, height: int) -> str | None:
    if isinstance(seg, Mapping):
        size = seg.get("size")
        return None if list(size or []) == [height, width] else f"RLE mask of size {size} on a {width}x{height} image"
    if not isinstance(seg, list):
        return f"segmentation of type {type(seg).__name__}"
    if not seg or not all(isinstance(p, list) for p in seg):
        return "segmentation is not a list of polygons"
    inside = False
    for p in seg:
        if len(p) < 6 or len(p) % 2:
            return f"a polygon has {len(p) // 2} points (at least 3 needed)"
        xs, ys = np.asarray(p[0::2], float), np.asarray(p[1::2], float)
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            return "a polygon has non-finite coordinates"
        inside = inside or (xs.max() > 0 and ys.max() > 0 and xs.min() < width and ys.min() < height)
    return None if inside else f"its polygons lie entirely outside the {width}x{height} image"


def _check_keypoints(kp, num_joints: int) -> str | None:
    if isinstance(kp, list) and len(kp) == 3 * num_joints:
        return None
    return f"expected {3 * num_joints} keypoint values, got {len(kp) if isinstance(kp, list) else kp!r}"


def load_coco_split(cfg: Mapping, split: str, content: str, *, logger: logging.Logger,
                    **checks) -> tuple[Mapping, CocoIndex]:
    """`data.<split>` of a recipe (its `annotations` JSON and `images` folder, relative to the recipe) indexed by
    `load_coco` with `checks`; returns that section and the index. `content` names the JSON in errors."""
    section = cfg["data"].get(split) or {}
    if not section.get("annotations") or not section.get("images"):
        raise ValueError(f"data.{split}: give 'annotations' (a COCO {content} JSON) and 'images' (a folder)")
    index = load_coco(resolve_path(cfg, section["annotations"]), resolve_path(cfg, section["images"]),
                      logger=logger, **checks)
    return section, index


def load_coco(ann_file: str | os.PathLike, image_dir: str | os.PathLike, *, logger: logging.Logger,
              need_masks: bool = False, need_keypoints: int | None = None) -> CocoIndex:
    """Index a COCO JSON file, reporting (via `logger`) and leaving out every unusable entry, also those without
    a valid segmentation (`need_masks`) or 3 × `need_keypoints` keypoint values."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file {ann_file} does not exist")
    try:
        data = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{ann_file}: not valid JSON ({e})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("images"), list):
        raise ValueError(f"{ann_file}: not a COCO file (no 'images' list)")
    rejected: list[str] = []

    def reject(msg: str) -> None:
        rejected.append(msg)
        report_bad(logger, f"{ann_file.name}: {msg}")

    categories = [c for c in data.get("categories") or [] if isinstance(c, Mapping) and "id" in c]
    known_cats = {c["id"] for c in categories}
    images: dict[int, dict] = {}
    for im in data["images"]:
        if not isinstance(im, Mapping) or "id" not in im or "file_name" not in im:
            reject(f"image entry {im!r:.80} has no id or file_name")
            continue
        iid = im["id"]
        if iid in images:
            reject(f"image id {iid} appears twice ({images[iid]['file_name']}, {im['file_name']})")
            continue
        path = image_dir / im["file_name"]
        if not path.is_file():
            reject(f"image {iid} ({path}): file not found")
            continue
        try:
            w, h = int(im["width"]), int(im["height"])
        except (KeyError, TypeError, ValueError):
            reject(f"image {iid} ({path}): no valid width/height")
            continue
        images[iid] = {"id": iid, "file": path, "file_name": im["file_name"], "width": w, "height": h}
    all_ids = {im.get("id") for im in data["images"] if isinstance(im, Mapping)}
    annotations: dict[int, list[dict]] = {i: [] for i in images}
    crowd: dict[int, list[dict]] = {i: [] for i in images}
    for ann in data.get("annotations") or []:
        if not isinstance(ann, Mapping):
            reject(f"annotation entry {ann!r:.80} is not a mapping")
            continue
        aid, iid = ann.get("id"), ann.get("image_id")
        if iid not in images:
            why = "not in the file" if iid not in all_ids else "left out (see above)"
            reject(f"annotation {aid} references image {iid}, which is {why}")
            continue
        if ann.get("category_id") not in known_cats:
            reject(f"annotation {aid} (image {iid}): unknown category {ann.get('category_id')}")
            continue
        w, h = images[iid]["width"], images[iid]["height"]
        box = _box(ann, w, h)
        problem = box if isinstance(box, str) else None
        if problem is None and need_masks:
            problem = _check_segmentation(ann.get("segmentation"), w, h)
        if problem is None and need_keypoints is not None:
            problem = _check_keypoints(ann.get("keypoints"), need_keypoints)
        if problem:
            reject(f"annotation {aid} (image {iid}): {problem}")
            continue
        (crowd if ann.get("iscrowd") else annotations)[iid].append({**ann, "box": box})
    return CocoIndex(ann_file, images, annotations, crowd, categories, rejected)


def annotation_mask(ann: Mapping, height: int, width: int) -> np.ndarray:
    """The H×W uint8 mask of a polygon or RLE annotation (rasterised by pycocotools)."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        seg = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        seg = mask_utils.frPyObjects(seg, height, width)
    with warnings.catch_warnings():  # pycocotools' decode trips NumPy 2's __array__(copy=) deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(seg).astype(np.uint8)


def coco_ground_truth(index: CocoIndex, keypoints: bool = False):
    """pycocotools' COCO of only the usable images and annotations of `index` (crowd ones too: COCOeval ignores
    them), so that evaluation scores exactly what was checked."""
    images = [{"id": im["id"], "file_name": im["file_name"], "width": im["width"], "height": im["height"]}
              for im in index.images.values()]
    anns = []
    usable = [a for source in (index.annotations, index.crowd) for lst in source.values() for a in lst]
    next_id = 1 + max([a.get("id") or 0 for a in usable] + [0])
    for a in usable:
        entry = {k: v for k, v in a.items() if k != "box"}
        if entry.get("id") is None:
            entry["id"] = next_id
            next_id += 1
        x1, y1, x2, y2 = a["box"]
        entry.setdefault("area", (x2 - x1) * (y2 - y1))
        entry.setdefault("iscrowd", 0)
        if keypoints and "num_keypoints" not in entry:
            entry["num_keypoints"] = int(sum(v > 0 for v in entry["keypoints"][2::3]))
        anns.append(entry)
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [dict(c) for c in index.categories]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def encode_mask(mask) -> dict:
    """The COCO RLE (`size`, `counts` as text) of an H×W binary mask."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask).astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def instance_results(out: Mapping, image_id, cat_ids, segm_area: str = "box") -> tuple[list, list]:
    """COCO result entries (bbox, and segm with `masks`) of one image's detections (`labels` 1..K index
    `cat_ids`). `segm_area="box"` keeps each mask result's `bbox`, so that pycocotools sizes it by box area for
    APs/m/l as mmdetection 2.11 did (2.12 sized by mask area: "mask"); the overall AP does not depend on it."""
    if segm_area not in ("box", "mask"):
        raise ValueError(f"segm_area={segm_area!r}: expected 'box' (mmdet 2.11) or 'mask'")
    boxes, segms = [], []
    for j in range(len(out["boxes"])):
        x1, y1, x2, y2 = (float(v) for v in out["boxes"][j])
        common = {"image_id": image_id, "category_id": int(cat_ids[int(out["labels"][j]) - 1]),
                  "score": float(out["scores"][j])}
        boxes.append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
        if "masks" in out:
            segm = {**common, "segmentation": encode_mask(out["masks"][j])}
            if segm_area == "box":
                segm["bbox"] = boxes[-1]["bbox"]
            segms.append(segm)
    return boxes, segms


def evaluate_instances(gt, results: list[dict], iou_type: str, image_ids) -> dict:
    """pycocotools COCOeval of `results` ("bbox" or "segm") on `image_ids`: `{iou_type}_AP` ... `_APl`."""
    return evaluate_coco(gt, results, iou_type, image_ids, [f"{iou_type}_{n}" for n in INSTANCE_STATS])


def evaluate_coco(gt, results: list[dict], iou_type: str, image_ids, stat_names: Sequence[str],
                  sigmas: np.ndarray | None = None) -> dict:
    """pycocotools COCOeval of `results` on `image_ids` (OKS `sigmas` for keypoints): its first stats by
    `stat_names`, all 0.0 without results."""
    if not results:
        return {name: 0.0 for name in stat_names}
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.params.imgIds = sorted(image_ids)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(stat_names, ev.stats)}
