"""A small built-in video dataset whose classes can only be told apart over time.

Training, evaluation and inference run end to end on it without downloads. Classes (:data:`CLASSES`): a shape
moving left to right / right to left, rotating clockwise / counterclockwise. Every clip shows one asymmetric shape
(random size, colour, orientation, start) on a random smooth texture with per-frame noise, the same shapes in every
class, so any single frame has the same distribution in every class: only motion reveals the label (and horizontal
flips would swap classes). Clips are MP4 (H.264 when available, else MPEG-4 Part 2); generation is deterministic
given ``seed`` and cached: a ``demo_meta.json`` written last marks a complete dataset.

Command line: ``python -m uniformer.data.demo --root DIR [--seed 0] [--num-train 400] ...``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from .video_io import pick_video_codec, write_video

CLASSES = ("move_left_to_right", "move_right_to_left", "rotate_clockwise", "rotate_counterclockwise")
_FORMAT_VERSION = 2
_SUPERSAMPLE = 4

# Shape outlines in units of the shape radius, centred on the origin, none rotationally symmetric.
_SHAPES = (
    # L
    ((-0.7, -1.0), (-0.2, -1.0), (-0.2, 0.5), (0.8, 0.5), (0.8, 1.0), (-0.7, 1.0)),
    # flag: pole with a triangular pennant
    ((-0.8, -1.0), (-0.45, -1.0), (-0.45, -0.95), (0.9, -0.45), (-0.45, 0.05), (-0.45, 1.0), (-0.8, 1.0)),
    # right triangle with a notch in the long leg
    ((-0.9, -0.9), (0.9, 0.9), (0.15, 0.9), (0.15, 0.45), (-0.35, 0.45), (-0.35, 0.9), (-0.9, 0.9)),
)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random colour texture (float32, H x W x 3 in [0, 255])."""
    cells = int(rng.integers(3, 9))
    grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
    coarse = np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR), dtype=np.float32)
    fine_cells = int(rng.integers(8, 17))
    fine = rng.uniform(-1, 1, size=(fine_cells, fine_cells, 1)).astype(np.float32)
    fine_img = Image.fromarray(((fine[..., 0] + 1) * 127.5).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    fine = (np.asarray(fine_img, dtype=np.float32)[..., None] / 127.5 - 1.0) * rng.uniform(5, 15)
    contrast = rng.uniform(0.15, 0.4)
    base = rng.uniform(50, 200)
    return np.clip(base + (coarse - 127.5) * contrast + fine, 0, 255)


def _shape_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour whose luminance differs clearly from the background's mean."""
    lum = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]  # noqa: E731
    bg = lum(background.reshape(-1, 3).mean(0))
    for _ in range(50):
        colour = rng.uniform(0, 255, size=3)
        if abs(lum(colour) - bg) > 90:
            return colour.astype(np.float32)
    return np.full(3, 255.0 if bg < 128 else 0.0, dtype=np.float32)


def _mask(points: np.ndarray, cx: float, cy: float, size: int) -> np.ndarray:
    """Anti-aliased coverage mask (H x W float32 in [0, 1]) of a polygon, wrapping around horizontally."""
    s = _SUPERSAMPLE
    img = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(img)
    for dx in (-size, 0, size):
        poly = [((x + cx + dx) * s, (y + cy) * s) for x, y in points]
        draw.polygon(poly, fill=255)
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def render_clip(label: int, rng: np.random.Generator, *, num_frames: int, size: int) -> np.ndarray:
    """Render one clip of class ``label`` as ``(num_frames, size, size, 3)`` uint8."""
    if label not in range(len(CLASSES)):
        raise ValueError(f"label must be in 0..{len(CLASSES) - 1}, got {label}")
    background = _background(rng, size)
    colour = _shape_colour(rng, background)
    outline = np.array(_SHAPES[int(rng.integers(len(_SHAPES)))], dtype=np.float64)
    radius = rng.uniform(0.17, 0.25) * size
    if rng.random() < 0.5:
        outline[:, 0] *= -1  # mirror image: both chiralities appear in every class
    angle0 = rng.uniform(0, 2 * math.pi)
    cx0 = rng.uniform(0, size)
    cy0 = rng.uniform(radius, size - radius)
    noise_sigma = rng.uniform(1, 4)
    if label < 2:
        speed = rng.uniform(2.5, 4.5) * (1 if label == 0 else -1)  # pixels per frame (at size 64)
        speed *= size / 64
        drift = rng.uniform(-0.3, 0.3) * size / 64
        spin = 0.0
    else:
        speed, drift = 0.0, 0.0
        # image y points down, so a positive angle step turns clockwise on screen
        spin = math.radians(rng.uniform(15, 30)) * (1 if label == 2 else -1)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        angle = angle0 + spin * t
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        points = outline @ rot.T * radius
        cx = (cx0 + speed * t) % size
        cy = float(np.clip(cy0 + drift * t, radius, size - radius))
        m = _mask(points, cx, cy, size)[..., None]
        frame = background * (1 - m) + colour * m + rng.normal(0, noise_sigma, size=(size, size, 3))
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def _result(root: Path, params: dict, generated: bool, seconds: float) -> dict[str, Any]:
    size = params["size"]
    files = {"train_list": str(root / "train.txt"), "val_list": str(root / "val.txt"),
             "class_names": str(root / "classnames.txt")}
    return {
        "root": str(root), **files, **{k: v for k, v in params.items() if k != "version"},
        "num_classes": len(CLASSES), "generated": generated, "seconds": seconds,
        # A data config suited to this dataset (hflip must stay off: it would swap the classes).
        "data_config": {
            "format": "video_list", "root": str(root), **files, "num_frames": min(8, params["num_frames"]),
            "sampling": "uniform", "input_size": size, "short_side": size, "scale_jitter": [size, int(size * 1.25)],
            "random_resized_crop": False, "hflip": False, "rand_augment": None, "random_erasing": 0.0,
            "test_clips": 1, "test_crops": 1,
        },
    }


def _is_complete(root: Path, params: dict) -> bool:
    try:
        meta = json.loads((root / "demo_meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    names = ("train.txt", "val.txt", "classnames.txt")
    if meta.get("params") != params or not all((root / name).is_file() for name in names):
        return False
    lists = ((root / name).read_text(encoding="utf-8").splitlines() for name in ("train.txt", "val.txt"))
    return all((root / line.rsplit(None, 1)[0]).is_file() for lines in lists for line in lines if line.strip())


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def generate_demo_dataset(root: str | Path, *, num_train: int = 400, num_val: int = 100, num_frames: int = 16,
                          size: int = 64, fps: int = 15, seed: int = 0, codec: str | None = None,
                          progress: bool = False) -> dict[str, Any]:
    """Generate (once) the demo dataset under ``root``; returns its paths and parameters, ``generated`` (False when
    a complete dataset with the same parameters was there) and ``data_config`` (a ``data:`` section for it).
    Lists hold ``videos/<split>/<n>.mp4 <label>`` lines, relative to ``root``."""
    start = time.perf_counter()
    for name, value, minimum in (("num_train", num_train, 1), ("num_val", num_val, 1), ("num_frames", num_frames, 2),
                                 ("size", size, 16), ("fps", fps, 1)):
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"generate_demo_dataset: {name} must be an integer >= {minimum}, got {value!r}")
    if size % 2:
        raise ValueError(f"generate_demo_dataset: size must be even (H.264 yuv420p), got {size}")
    root = Path(root).expanduser().resolve()
    codec = codec or pick_video_codec()
    params = {"version": _FORMAT_VERSION, "num_train": num_train, "num_val": num_val, "num_frames": num_frames,
              "size": size, "fps": fps, "seed": seed, "codec": codec, "classes": list(CLASSES)}
    if _is_complete(root, params):
        return _result(root, params, False, time.perf_counter() - start)

    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / "demo_meta.json"
    if meta_path.exists():
        meta_path.unlink()  # parameters changed (or incomplete): regenerate
    bar = tqdm(total=num_train + num_val, desc="demo videos", unit="clip", disable=not progress)
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        lines = []
        for i in range(count):
            label = i % len(CLASSES)  # balanced classes
            rng = np.random.default_rng([seed, split_id, i])
            frames = render_clip(label, rng, num_frames=num_frames, size=size)
            rel = f"videos/{split}/{i:06d}.mp4"
            path = root / rel
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
            write_video(tmp, frames, fps, codec=codec)
            os.replace(tmp, path)
            lines.append(f"{rel} {label}\n")
            bar.update(1)
        _write_text_atomic(root / f"{split}.txt", "".join(lines))
    bar.close()
    _write_text_atomic(root / "classnames.txt", "".join(f"{c}\n" for c in CLASSES))
    seconds = time.perf_counter() - start
    _write_text_atomic(meta_path, json.dumps({"params": params, "generation_seconds": seconds}, indent=2))
    return _result(root, params, True, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the built-in UniFormer demo video dataset.")
    parser.add_argument("--root", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--codec", default=None, help="encoder (default: libx264 if available, else mpeg4)")
    args = parser.parse_args(argv)
    info = generate_demo_dataset(
        args.root, num_train=args.num_train, num_val=args.num_val, num_frames=args.num_frames, size=args.size,
        fps=args.fps, seed=args.seed, codec=args.codec, progress=True,
    )
    state = "generated" if info["generated"] else "already present"
    counts = f"{info['num_train']} train / {info['num_val']} val clips"
    print(f"{state}: {counts} in {info['root']} ({info['seconds']:.1f}s)")
    print(f"train list: {info['train_list']}\nval list:   {info['val_list']}\nclasses:    {info['class_names']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
