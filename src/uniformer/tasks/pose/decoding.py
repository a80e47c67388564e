"""Top-down pose geometry: person boxes to crops, affine warps, Gaussian heatmap targets, decoding.

Conventions (as mmpose's TopDown pipeline): a person is a `center` (x, y) and a `scale` (w, h) in
pixels, the box padded by 1.25 and widened or heightened to the input's aspect ratio. The crop is
an affine warp that maps the scaled box, rotated by `rotation` degrees, onto the input; heatmaps
are a quarter of the input. Decoding takes each heatmap's argmax shifted a quarter pixel towards
the higher neighbour ("default"), or refines it with DARK's Taylor expansion ("unbiased"), and maps
it back through the box.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["box_to_center_scale", "affine_matrix", "warp", "apply_affine", "gaussian_targets", "decode_heatmaps",
           "flip_back", "oks_nms", "COCO_SIGMAS"]

# COCO's per-keypoint OKS constants (a tuple: module constants stay immutable).
COCO_SIGMAS = (.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089)


def box_to_center_scale(box: Sequence[float], aspect: float, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, w, h) box → center and (w, h) scale of aspect `aspect` = width / height, padded."""
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + 0.5 * w, y + 0.5 * h], np.float64)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], np.float64) * padding


def affine_matrix(center: np.ndarray, scale: np.ndarray, rotation: float, out_size: Sequence[int],
                  inverse: bool = False) -> np.ndarray:
    """2×3 matrix taking image pixels to output pixels (`inverse`: output to image).

    `out_size` is (width, height); the box width `scale[0]` maps onto the output width, the box is
    rotated by `rotation` degrees (counter-clockwise in the image) about its center."""
    out_w, out_h = out_size
    s = out_w / scale[0]
    a = math.radians(rotation)
    cos, sin = math.cos(a), math.sin(a)
    # x_out = s * R(a) (x - c) + out_center, with R rotating image content clockwise by `a` in the output
    r = np.array([[cos, -sin], [sin, cos]]) * s
    t = np.array([out_w * 0.5, out_h * 0.5]) - r @ center
    m = np.concatenate([r, t[:, None]], 1)
    if inverse:
        r_inv = np.linalg.inv(r)
        m = np.concatenate([r_inv, (-r_inv @ t)[:, None]], 1)
    return m


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a 2×3 matrix to N×2 points."""
    return points @ m[:, :2].T + m[:, 2]


def warp(image: np.ndarray, center: np.ndarray, scale: np.ndarray, rotation: float,
         out_size: Sequence[int]) -> np.ndarray:
    """The affine crop (bilinear, zero outside the image) of an RGB uint8 image; out_size = (width, height)."""
    inv = affine_matrix(center, scale, rotation, out_size, inverse=True)
    # PIL maps output pixel centres (x + 0.5) through the coefficients; pixel coordinates here are integer-centred.
    a, b, c = inv[0]
    d, e, f = inv[1]
    coeffs = (a, b, c - 0.5 * (a + b) + 0.5, d, e, f - 0.5 * (d + e) + 0.5)
    img = Image.fromarray(image).transform(tuple(out_size), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    return np.asarray(img)


def gaussian_targets(joints: np.ndarray, visible: np.ndarray, heatmap_size: Sequence[int], stride: float,
                     sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """K×H×W Gaussian heatmaps (peak 1 at the joint rounded to the heatmap grid, cut at 3σ) and K weights
    (0 for invisible joints and joints whose Gaussian falls outside the heatmap)."""
    w, h = heatmap_size
    k = len(joints)
    target = np.zeros((k, h, w), np.float32)
    weight = (visible > 0).astype(np.float32)
    radius = sigma * 3
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    for j in range(k):
        if weight[j] == 0:
            continue
        mx, my = int(joints[j, 0] / stride + 0.5), int(joints[j, 1] / stride + 0.5)
        if mx - radius >= w or my - radius >= h or mx + radius + 1 <= 0 or my + radius + 1 <= 0:
            weight[j] = 0
            continue
        g = np.exp(-((xs - mx) ** 2 + (ys - my) ** 2) / (2 * sigma**2))
        g[(np.abs(ys - my) > radius).repeat(w, 1) | (np.abs(xs - mx) > radius).repeat(h, 0)] = 0
        target[j] = g
    return target, weight


def flip_back(heatmaps: torch.Tensor, flip_pairs: Sequence[Sequence[int]], shift: bool = True) -> torch.Tensor:
    """Heatmaps of a horizontally flipped input → heatmaps of the original: mirror, swap left/right
    channels, and (mmpose's `shift_heatmap`) shift one pixel right to undo the flip's pixel offset."""
    out = heatmaps.flip(-1).clone()
    for a, b in flip_pairs:
        out[:, [a, b]] = out[:, [b, a]]
    if shift:
        out[..., 1:] = out[..., :-1].clone()
    return out


def _gaussian_blur(hm: torch.Tensor, kernel: int) -> torch.Tensor:
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a kernel size
    x = torch.arange(kernel, dtype=hm.dtype) - (kernel - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    n, k, h, w = hm.shape
    flat = hm.reshape(n * k, 1, h, w)
    pad = kernel // 2
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), g.view(1, 1, -1, 1))
    out = flat.reshape(n, k, h, w)
    peak = hm.amax((2, 3), keepdim=True)
    return out * peak / out.amax((2, 3), keepdim=True).clamp_min(1e-12)


def decode_heatmaps(heatmaps: torch.Tensor, centers: np.ndarray, scales: np.ndarray, method: str = "default",
                    kernel: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """N×K×H×W heatmaps → N×K×2 image coordinates and N×K peak values."""
    hm = heatmaps.detach().float().cpu()
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, -1)
    maxvals, idx = flat.max(-1)
    coords = torch.stack([(idx % w).float(), (idx // w).float()], -1)
    px, py = (idx % w), (idx // w)
    if method == "default":
        inner = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
        pxc, pyc = px.clamp(1, w - 2), py.clamp(1, h - 2)

        def at(yy, xx):
            return hm.reshape(n * k, h, w)[torch.arange(n * k), yy.reshape(-1), xx.reshape(-1)].reshape(n, k)

        dx = at(pyc, pxc + 1) - at(pyc, pxc - 1)
        dy = at(pyc + 1, pxc) - at(pyc - 1, pxc)
        coords += torch.stack([dx.sign(), dy.sign()], -1) * 0.25 * inner[..., None]
    elif method == "unbiased":  # DARK: Taylor expansion of the log of the blurred heatmap
        logs = _gaussian_blur(hm, kernel).clamp_min(1e-10).log()
        inner = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
        pxc, pyc = px.clamp(2, w - 3), py.clamp(2, h - 3)

        def at(yy, xx):
            return logs.reshape(n * k, h, w)[torch.arange(n * k), yy.reshape(-1), xx.reshape(-1)].reshape(n, k)

        c = at(pyc, pxc)
        dx = 0.5 * (at(pyc, pxc + 1) - at(pyc, pxc - 1))
        dy = 0.5 * (at(pyc + 1, pxc) - at(pyc - 1, pxc))
        dxx = 0.25 * (at(pyc, pxc + 2) - 2 * c + at(pyc, pxc - 2))
        dyy = 0.25 * (at(pyc + 2, pxc) - 2 * c + at(pyc - 2, pxc))
        dxy = 0.25 * (at(pyc + 1, pxc + 1) - at(pyc - 1, pxc + 1) - at(pyc + 1, pxc - 1) + at(pyc - 1, pxc - 1))
        det = dxx * dyy - dxy**2
        ok = inner & (det.abs() > 1e-12)
        safe = torch.where(ok, det, torch.ones_like(det))
        ox = -(dyy * dx - dxy * dy) / safe
        oy = -(-dxy * dx + dxx * dy) / safe
        coords += torch.stack([ox, oy], -1) * ok[..., None]
    else:
        raise ValueError(f"post_process={method!r}: expected 'default' or 'unbiased'")
    coords = coords.numpy().astype(np.float64)
    # heatmap → image through the (unrotated) box: scale / heatmap width pixels per heatmap pixel
    out = coords * (scales[:, None, :] / np.array([w, h])) + centers[:, None, :] - scales[:, None, :] * 0.5
    return out, maxvals.numpy()


def oks_nms(people: list[dict], threshold: float, sigmas: np.ndarray, vis_threshold: float = 0.2) -> list[int]:
    """Indices of the people kept by greedy non-maximum suppression on object keypoint similarity."""
    if not people:
        return []
    scores = np.array([p["score"] for p in people])
    kpts = np.stack([p["keypoints"] for p in people])  # N×K×3
    areas = np.array([p["area"] for p in people])
    order = scores.argsort()[::-1]
    variances = (sigmas * 2) ** 2
    keep = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        if not len(rest):
            break
        d = kpts[rest, :, :2] - kpts[i, None, :, :2]
        e = (d**2).sum(-1) / variances / ((areas[i] + areas[rest])[:, None] / 2 + np.spacing(1)) / 2
        vis = (kpts[i, None, :, 2] > vis_threshold) & (kpts[rest, :, 2] > vis_threshold)
        oks = np.where(vis, np.exp(-e), 0).sum(-1) / np.maximum(vis.sum(-1), 1)
        order = rest[oks <= threshold]
    return keep
