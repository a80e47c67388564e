"""Small built-in datasets for the demos and tests in each task's on-disk format: coloured shapes on textured
backgrounds (COCO instances; image + mask folders) and stick figures with the 17 COCO keypoints. A seeded
generator makes every call write the same files; a `.complete` marker lets a later call reuse them."""
from __future__ import annotations

import colorsys
import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["SHAPE_CLASSES", "write_shapes_segmentation", "write_shapes_coco", "write_pose_coco",
           "COCO_KEYPOINTS", "COCO_SKELETON", "COCO_FLIP_PAIRS"]

SHAPE_CLASSES = ("circle", "square", "triangle")
_VERSION = 2

COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
# COCO's skeleton (1-based in the annotation files), here 0-based.
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


def _generate(root: str | Path, signature: dict, write) -> Path:
    """Write `root` by `write(root, rng)` unless its `.complete` marker already holds `signature` (the
    generator's version and arguments)."""
    root = Path(root)
    marker = root / ".complete"
    if marker.is_file() and json.loads(marker.read_text()) == signature:
        return root
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    write(root, np.random.default_rng(signature["seed"]))
    marker.write_text(json.dumps(signature))
    return root


def _write_coco(root: str | Path, signature: dict, json_name: str, categories: list[dict], draw_image) -> Path:
    """COCO layout: {train,val}/*.jpg and annotations/<json_name>_{train,val}.json; `draw_image(rng, h, w)`
    gives a PIL image and its annotations (ids are added here)."""
    h, w = signature["size"]

    def write(root: Path, rng: np.random.Generator) -> None:
        (root / "annotations").mkdir()
        ann_ids = itertools.count(1)
        for split, n in zip(("train", "val"), signature["n"]):
            (root / split).mkdir()
            images, annotations = [], []
            for i in range(n):
                img, anns = draw_image(rng, h, w)
                name = f"{split}_{i:04d}.jpg"
                img.save(root / split / name, quality=95)
                images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
                annotations += [{"id": next(ann_ids), "image_id": i + 1, **ann} for ann in anns]
            (root / "annotations" / f"{json_name}_{split}.json").write_text(json.dumps(
                {"images": images, "annotations": annotations, "categories": categories}))

    return _generate(root, signature, write)


def _coco_box(x0, y0, x1, y1, w: int, h: int) -> tuple[list, float, float]:
    """COCO's rounded [x, y, w, h] of a box clipped to the image, and its clipped width and height."""
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], x1 - x0, y1 - y0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour waves, stripes and grain: texture the model must learn to ignore."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    base = rng.uniform(70, 180) + rng.uniform(-20, 20, size=3)  # muted colours: the shapes are the saturated things
    for c in range(3):
        fx, fy = rng.uniform(0.02, 0.15, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        img[..., c] = base[c] + 15 * np.sin(fx * xx + fy * yy + phase)
    angle = rng.uniform(0, np.pi)
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(0.3, 0.8))
    img += 12 * stripes[..., None]
    img += rng.normal(0, 6, size=img.shape)
    return img.clip(0, 255).astype(np.uint8)


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    n = {"circle": 32, "square": 4, "triangle": 3}[kind]
    start = 0.0 if kind == "circle" else angle  # the circle's 32-gon is not turned
    return [(cx + r * math.cos(start + 2 * math.pi * i / n), cy + r * math.sin(start + 2 * math.pi * i / n))
            for i in range(n)]


def _shapes_image(rng: np.random.Generator, h: int, w: int, max_shapes: int, radius=(10, 22)):
    """An image and its non-overlapping shape instances: (class 1..3, polygon, mask)."""
    img = Image.fromarray(_background(rng, h, w))
    draw = ImageDraw.Draw(img)
    placed: list[tuple[float, float, float]] = []
    instances = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            r = float(rng.uniform(*radius))
            cx, cy = float(rng.uniform(r + 1, w - r - 1)), float(rng.uniform(r + 1, h - r - 1))
            if all(math.hypot(cx - px, cy - py) > r + pr + 3 for px, py, pr in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        cls = int(rng.integers(0, len(SHAPE_CLASSES)))
        poly = _shape_polygon(SHAPE_CLASSES[cls], cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
        hue = float(rng.uniform(0, 1))
        colour = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, float(rng.uniform(0.6, 1.0)),
                                                                 float(rng.uniform(0.5, 1.0))))
        draw.polygon(poly, fill=colour)
        mask_img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask_img).polygon(poly, fill=1)
        instances.append((cls + 1, poly, np.asarray(mask_img).astype(bool)))
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(img), instances


def write_shapes_segmentation(root: str | Path, n_train: int = 200, n_val: int = 40, size=(96, 96),
                              max_shapes: int = 3, seed: int = 0) -> Path:
    """Folder layout: images/{train,val}/*.jpg, masks/{train,val}/*.png (0 background, 1..3 shapes), classes.txt."""
    h, w = size

    def write(root: Path, rng: np.random.Generator) -> None:
        for split, n in (("train", n_train), ("val", n_val)):
            (root / "images" / split).mkdir(parents=True)
            (root / "masks" / split).mkdir(parents=True)
            for i in range(n):
                img, instances = _shapes_image(rng, h, w, max_shapes)
                label = np.zeros((h, w), np.uint8)
                for cls, _, mask in instances:
                    label[mask] = cls
                Image.fromarray(img).save(root / "images" / split / f"{split}_{i:04d}.jpg", quality=95)
                Image.fromarray(label).save(root / "masks" / split / f"{split}_{i:04d}.png")
        (root / "classes.txt").write_text("\n".join(("background",) + SHAPE_CLASSES) + "\n")

    return _generate(root, {"kind": "shapes-seg", "version": _VERSION, "n": [n_train, n_val], "size": list(size),
                            "max_shapes": max_shapes, "seed": seed}, write)


def write_shapes_coco(root: str | Path, n_train: int = 200, n_val: int = 40, size=(128, 128), max_shapes: int = 3,
                      seed: int = 0) -> Path:
    """COCO instances layout: {train,val}/*.jpg and annotations/instances_{train,val}.json with polygons."""

    def draw_image(rng: np.random.Generator, h: int, w: int):
        img, instances = _shapes_image(rng, h, w, max_shapes, radius=(8, 26))
        anns = []
        for cls, poly, mask in instances:
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            anns.append({"category_id": cls, "iscrowd": 0, "area": float(mask.sum()),
                         "bbox": _coco_box(min(xs), min(ys), max(xs), max(ys), w, h)[0],
                         "segmentation": [[round(v, 2) for p in poly for v in p]]})
        return Image.fromarray(img), anns

    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)]
    return _write_coco(root, {"kind": "shapes-coco", "version": _VERSION, "n": [n_train, n_val], "size": list(size),
                              "max_shapes": max_shapes, "seed": seed}, "instances", categories, draw_image)


# --- stick figures ------------------------------------------------------------------------------------
def _figure(rng: np.random.Generator, cx: float, top: float, height: float) -> np.ndarray:
    """17 COCO keypoints (x, y) of a standing figure with random limb angles, `height` tall."""
    u = height / 7.0
    sway = rng.uniform(-0.4, 0.4) * u
    neck = np.array([cx + sway, top + 1.4 * u])
    nose = np.array([cx + sway * 0.5 + rng.uniform(-0.2, 0.2) * u, top + 0.6 * u])
    k = np.zeros((17, 2))
    k[0] = nose
    k[1], k[2] = nose + [0.25 * u, -0.2 * u], nose + [-0.25 * u, -0.2 * u]
    k[3], k[4] = nose + [0.5 * u, 0.0], nose + [-0.5 * u, 0.0]
    k[5], k[6] = neck + [0.9 * u, 0.1 * u], neck + [-0.9 * u, 0.1 * u]
    hip = neck + [rng.uniform(-0.2, 0.2) * u, 2.6 * u]
    k[11], k[12] = hip + [0.6 * u, 0.0], hip + [-0.6 * u, 0.0]
    for side, (s, e, wr) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
        a1 = math.radians(rng.uniform(-30, 120))  # upper arm angle from pointing down
        a2 = a1 + math.radians(rng.uniform(-20, 120))
        k[e] = k[s] + 1.3 * u * np.array([side * math.sin(a1), math.cos(a1)])
        k[wr] = k[e] + 1.2 * u * np.array([side * math.sin(a2), math.cos(a2)])
    for side, (hp, kn, an) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        a1 = math.radians(rng.uniform(-10, 40))
        a2 = a1 - math.radians(rng.uniform(0, 50))
        k[kn] = k[hp] + 1.5 * u * np.array([side * math.sin(a1), math.cos(a1)])
        k[an] = k[kn] + 1.5 * u * np.array([side * math.sin(a2), math.cos(a2)])
    return k


def write_pose_coco(root: str | Path, n_train: int = 200, n_val: int = 40, size=(128, 128), max_people: int = 2,
                    seed: int = 0) -> Path:
    """COCO keypoints layout: {train,val}/*.jpg and annotations/person_keypoints_{train,val}.json. Left limbs
    are warm and right limbs cool colours, so the sides can be told apart; the face sits on a skin-coloured head."""
    limb_colour = {**dict.fromkeys([(5, 7), (7, 9), (11, 13), (13, 15), (5, 11)], (230, 60, 40)),
                   **dict.fromkeys([(6, 8), (8, 10), (12, 14), (14, 16), (6, 12)], (40, 90, 230))}

    def draw_image(rng: np.random.Generator, h: int, w: int):
        img = Image.fromarray(_background(rng, h, w))
        draw = ImageDraw.Draw(img)
        people = int(rng.integers(1, max_people + 1))
        slot = w / people
        anns = []
        for p in range(people):
            height = float(rng.uniform(0.55, 0.85) * h)
            cx = float(slot * (p + 0.5) + rng.uniform(-0.1, 0.1) * slot)
            top = float(rng.uniform(2, h - height - 2))
            k = _figure(rng, cx, top, height)
            width = max(2, int(round(height / 28)))
            for a, b in COCO_SKELETON:
                if a > 4 or b > 4:  # the face's edges are not drawn
                    draw.line([tuple(k[a]), tuple(k[b])], fill=limb_colour.get((a, b), (40, 200, 60)), width=width)
            r = 0.55 * height / 7.0
            draw.ellipse([k[0][0] - r, k[0][1] - r * 1.1, k[0][0] + r, k[0][1] + r * 1.1], fill=(235, 190, 150))
            for j, colour in ((1, (20, 20, 20)), (2, (20, 20, 20)), (3, (230, 60, 40)), (4, (40, 90, 230))):
                draw.ellipse([k[j][0] - 1.5, k[j][1] - 1.5, k[j][0] + 1.5, k[j][1] + 1.5], fill=colour)
            inside = (k[:, 0] >= 0) & (k[:, 0] < w) & (k[:, 1] >= 0) & (k[:, 1] < h)
            kp = []
            for (x, y), ok in zip(k, inside):
                kp += [round(float(x), 2), round(float(y), 2), 2] if ok else [0, 0, 0]
            bbox, bw, bh = _coco_box(*(k[inside].min(0) - 3), *(k[inside].max(0) + 3), w, h)
            anns.append({"category_id": 1, "iscrowd": 0, "bbox": bbox, "area": round(bw * bh * 0.6, 2),
                         "keypoints": kp, "num_keypoints": int(inside.sum())})
        return img, anns

    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_KEYPOINTS),
                "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]}
    return _write_coco(root, {"kind": "pose-coco", "version": _VERSION, "n": [n_train, n_val], "size": list(size),
                              "max_people": max_people, "seed": seed}, "person_keypoints", [category], draw_image)
