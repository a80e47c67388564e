"""Pictures of dense predictions (boxes and masks, label maps, skeletons) drawn with PIL over the RGB uint8
H×W×3 image, at its size, so a picture lines up pixel for pixel with its input."""
from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["palette", "draw_label_map", "draw_instances", "draw_keypoints"]


def palette(n: int) -> np.ndarray:
    """`n` distinct RGB colours (golden-ratio hues, two brightness levels), n×3 uint8."""
    out = np.zeros((max(n, 1), 3), dtype=np.uint8)
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        v = 0.95 if i % 2 == 0 else 0.7
        out[i] = [round(c * 255) for c in colorsys.hsv_to_rgb(h, 0.75, v)]
    return out


def draw_label_map(image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.5,
                   ignore_index: int = 255) -> Image.Image:
    """Blend class colours over the image (ignored pixels are left as they are)."""
    colours = palette(num_classes)
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    overlay = image.astype(np.float32).copy()
    overlay[valid] = (1 - alpha) * overlay[valid] + alpha * colours[labels[valid]]
    return Image.fromarray(overlay.clip(0, 255).astype(np.uint8))


def draw_instances(image: np.ndarray, boxes: np.ndarray, labels: Sequence[int], scores: Sequence[float],
                   names: Sequence[str], masks: np.ndarray | None = None, alpha: float = 0.45) -> Image.Image:
    """Boxes (x1, y1, x2, y2 pixels) with class name and score, and binary masks (N×H×W) if given."""
    colours = palette(max(len(names), 1))
    canvas = image.astype(np.float32).copy()
    if masks is not None:
        for m, lab in zip(masks, labels):
            m = m.astype(bool)
            canvas[m] = (1 - alpha) * canvas[m] + alpha * colours[int(lab) % len(colours)]
    pic = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for box, lab, score in zip(boxes, labels, scores):
        colour = tuple(int(c) for c in colours[int(lab) % len(colours)])
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        name = names[int(lab)] if 0 <= int(lab) < len(names) else str(int(lab))
        draw.text((x1 + 2, max(0.0, y1 - 11)), f"{name} {score:.2f}", fill=colour)
    return pic


def draw_keypoints(image: np.ndarray, people: Sequence[np.ndarray], skeleton: Sequence[Sequence[int]],
                   threshold: float = 0.2, radius: int = 2) -> Image.Image:
    """Each person is a K×3 array (x, y, score); joints under `threshold` and their limbs are not drawn."""
    pic = Image.fromarray(image.astype(np.uint8).copy())
    draw = ImageDraw.Draw(pic)
    limb_colours = palette(max(len(skeleton), 1))
    for kpts in people:
        for (a, b), colour in zip(skeleton, limb_colours):
            if kpts[a, 2] >= threshold and kpts[b, 2] >= threshold:
                draw.line([(kpts[a, 0], kpts[a, 1]), (kpts[b, 0], kpts[b, 1])], fill=tuple(int(c) for c in colour),
                          width=2)
        for x, y, s in kpts:
            if s >= threshold:
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255),
                             outline=(0, 0, 0))
    return pic
