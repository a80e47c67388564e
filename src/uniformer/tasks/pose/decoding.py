"""Top-down pose geometry and test pipeline (person crops, Gaussian heatmap targets, flip test, decoding, rescoring,
OKS-NMS), following mmpose 0.16's TopDown pipeline to the float: a person is a float32 `center` and `scale` (w, h)
in pixels, computed through mmpose's 200 px unit so that the values match bit for bit.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import nn

__all__ = ["box_to_center_scale", "affine_matrix", "warp", "apply_affine", "normalize_crop", "person_crops",
           "gaussian_targets", "topdown_heatmaps", "decode_heatmaps", "flip_back", "rescore", "oks_nms",
           "rescore_and_nms", "estimate_poses", "COCO_SIGMAS"]

# COCO's per-keypoint OKS constants
COCO_SIGMAS = (.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089)
PIXEL_STD = 200.0  # mmpose's unit of scale


def box_to_center_scale(box: Sequence[float], aspect: float, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, w, h) box → float32 center and (w, h) scale in pixels of aspect `aspect` = width / height, padded
    (mmpose's `_xywh2cs`)."""
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + w * 0.5, y + h * 0.5], np.float32)
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    scale = np.array([w / PIXEL_STD, h / PIXEL_STD], np.float32) * padding
    return center, scale * np.float32(PIXEL_STD)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return b + np.array([-d[1], d[0]], np.float32)


def affine_matrix(center: np.ndarray, scale: np.ndarray, rotation: float, out_size: Sequence[int],
                  inverse: bool = False) -> np.ndarray:
    """2×3 matrix taking image pixels to output pixels (`inverse`: output to image), mmpose's
    `get_affine_transform`: the box center goes to the output center, the point half a box width above
    it (rotated by `rotation` degrees) to the top-middle of the output, as three float32 point pairs."""
    out_w, out_h = (float(v) for v in out_size)
    center = np.asarray(center, np.float32)
    half = np.asarray(scale, np.float32)[0] * -0.5
    a = np.pi * rotation / 180
    src = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + np.array([-half * np.sin(a), half * np.cos(a)])
    src[2] = _third_point(src[0], src[1])
    dst = np.zeros((3, 2), np.float32)
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = [out_w * 0.5, out_h * 0.5 - out_w * 0.5]
    dst[2] = _third_point(dst[0], dst[1])
    return cv2.getAffineTransform(dst, src) if inverse else cv2.getAffineTransform(src, dst)


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a 2×3 matrix to N×2 points."""
    return points @ m[:, :2].T + m[:, 2]


def warp(image: np.ndarray, center: np.ndarray, scale: np.ndarray, rotation: float,
         out_size: Sequence[int]) -> np.ndarray:
    """The affine crop of an RGB uint8 image (OpenCV bilinear, zero outside the image); out_size = (width, height)."""
    m = affine_matrix(center, scale, rotation, out_size)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (int(out_size[0]), int(out_size[1])), flags=cv2.INTER_LINEAR)


def normalize_crop(crop: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 H×W×3 crop → 3×H×W float tensor in [0, 1], minus `mean`, over `std` (torchvision's order)."""
    x = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def person_crops(image: np.ndarray, boxes: Sequence[Sequence[float]], data_cfg: Mapping) -> dict:
    """The network input of one image's people (`boxes`: (x, y, w, h[, score])): `{"img": N×3×H×W, "center",
    "scale" (pixels), "score", "area"}` (float32 arrays; `area` is the padded box's, as mmpose's OKS-NMS uses)."""
    input_size = tuple(int(v) for v in data_cfg["input_size"])
    aspect = input_size[0] / input_size[1]
    centers, scales = zip(*(box_to_center_scale(box[:4], aspect, float(data_cfg["bbox_padding"])) for box in boxes))
    crops = [normalize_crop(warp(image, c, s, 0.0, input_size), data_cfg["mean"], data_cfg["std"])
             for c, s in zip(centers, scales)]
    scales = np.stack(scales)
    return {"img": torch.stack(crops), "center": np.stack(centers), "scale": scales,
            "score": np.array([float(b[4]) if len(b) > 4 else 1.0 for b in boxes], np.float32),
            "area": scales[:, 0] * scales[:, 1]}


def gaussian_targets(joints: np.ndarray, visible: np.ndarray, heatmap_size: Sequence[int], stride: float,
                     sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """K×H×W Gaussian heatmaps (peak 1 at the joint rounded to the heatmap grid, cut at 3σ) and K weights
    (0 for invisible joints and joints whose Gaussian falls outside the heatmap)."""
    w, h = heatmap_size
    target = np.zeros((len(joints), h, w), np.float32)
    weight = (visible > 0).astype(np.float32)
    radius = sigma * 3
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    for j in range(len(joints)):
        if weight[j] == 0:
            continue
        mx, my = int(joints[j, 0] / stride + 0.5), int(joints[j, 1] / stride + 0.5)
        if mx - radius >= w or my - radius >= h or mx + radius + 1 < 0 or my + radius + 1 < 0:
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


def _gaussian_blur(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """DARK's modulation: each map blurred (OpenCV's Gaussian of size `kernel`) with zeros beyond its border,
    then rescaled to its original maximum."""
    border = (kernel - 1) // 2
    out = np.empty_like(heatmaps)
    for idx in np.ndindex(heatmaps.shape[:2]):
        hm = heatmaps[idx]
        padded = np.pad(hm, border)
        blurred = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:-border, border:-border]
        with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero map: NaN, as mmpose (never used)
            out[idx] = blurred * (hm.max() / blurred.max())
    return out


def _taylor_offsets(logs: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """DARK's Newton step −H⁻¹∇ of the log-heatmaps at integer peaks (N×K×2; zero where the peak is within two
    pixels of the border or the Hessian is singular)."""
    n, k, h, w = logs.shape
    inside = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    x, y = np.where(inside, px, 2), np.where(inside, py, 2)
    nn_, kk = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")

    def at(dy: int, dx: int) -> np.ndarray:
        return logs[nn_, kk, y + dy, x + dx]

    c = at(0, 0)
    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    dyy = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
    solvable = inside & (dxx * dyy - dxy**2 != 0)
    hessian = np.stack([np.stack([dxx, dxy], -1), np.stack([dxy, dyy], -1)], -2)
    hessian[~solvable] = np.eye(2, dtype=hessian.dtype)
    offsets = -(np.linalg.inv(hessian) @ np.stack([dx, dy], -1)[..., None])[..., 0]
    return np.where(solvable[..., None], offsets, 0).astype(logs.dtype)


def decode_heatmaps(heatmaps: torch.Tensor | np.ndarray, centers: np.ndarray, scales: np.ndarray,
                    method: str = "default", kernel: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """N×K×H×W heatmaps → N×K×2 image coordinates (through the boxes `centers`, `scales`) and N×K peak values, as
    mmpose's `keypoints_from_heatmaps` (a map without a positive value puts its joint at heatmap (-1, -1))."""
    hm = heatmaps.detach().float().cpu().numpy() if isinstance(heatmaps, torch.Tensor) else np.asarray(heatmaps)
    hm = hm.astype(np.float32, copy=False)
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, -1)
    idx = flat.argmax(-1)
    maxvals = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    px, py = np.where(maxvals > 0, idx % w, -1), np.where(maxvals > 0, idx // w, -1)
    coords = np.stack([px, py], -1).astype(np.float32)
    if method == "default":
        inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
        x, y = np.where(inside, px, 1), np.where(inside, py, 1)
        nn_, kk = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
        diff = np.stack([hm[nn_, kk, y, x + 1] - hm[nn_, kk, y, x - 1], hm[nn_, kk, y + 1, x] - hm[nn_, kk, y - 1, x]],
                        -1)
        coords = coords + np.where(inside[..., None], np.sign(diff) * np.float32(0.25), np.float32(0))
    elif method == "unbiased":
        logs = np.log(np.maximum(_gaussian_blur(hm, kernel), np.float32(1e-10)))
        coords = coords + _taylor_offsets(logs, px, py)
    else:
        raise ValueError(f"post_process={method!r}: expected 'default' or 'unbiased'")
    # heatmap → image through the (unrotated) box, in float32 as mmpose's transform_preds
    centers = np.asarray(centers, np.float32)[:, None, :]
    scales = np.asarray(scales, np.float32)[:, None, :]
    out = coords * (scales / np.array([w, h], np.float32)) + centers - scales * np.float32(0.5)
    return out.astype(np.float32), maxvals


@torch.no_grad()
def topdown_heatmaps(model: nn.Module, img: torch.Tensor, flip_pairs: Sequence[Sequence[int]], flip: bool = True,
                     shift: bool = True) -> np.ndarray:
    """N×K×h×w float32 heatmaps of a batch of crops; `flip` averages them with those of the mirrored crops,
    flipped back (`shift`: moved one pixel right, mmpose's `shift_heatmap`)."""
    model.eval()
    img = img.to(next(model.parameters()).device)
    heat = model(img).float().cpu()
    if flip:
        heat = (heat + flip_back(model(img.flip(-1)).float().cpu(), flip_pairs, shift)) * 0.5
    return heat.numpy()


def rescore(keypoints: np.ndarray, box_scores, vis_thr: float) -> np.ndarray:
    """Person scores of mmpose's COCO evaluation: box score × mean confidence of the joints above `vis_thr`
    (0 when there is none); float32, summed joint by joint as mmpose does."""
    conf = np.asarray(keypoints, np.float32)[..., 2]
    good = conf > vis_thr
    total = np.cumsum(np.where(good, conf, np.float32(0)), -1, dtype=np.float32)[..., -1]
    count = good.sum(-1).astype(np.float32)
    mean = np.where(count > 0, total / np.maximum(count, np.float32(1)), np.float32(0))
    return (mean * np.asarray(box_scores, np.float32)).astype(np.float32)


def oks_nms(people: list[dict], threshold: float, sigmas: Sequence[float]) -> list[int]:
    """Indices of the people (`{"keypoints": K×3, "score", "area"}`) kept by greedy OKS-NMS, in the order kept
    (mmpose's `oks_nms` as its COCO evaluation calls it: every joint counts, whatever its confidence)."""
    if not people:
        return []
    scores = np.array([p["score"] for p in people])
    kpts = np.stack([np.asarray(p["keypoints"]) for p in people])  # N×K×3
    areas = np.array([p["area"] for p in people])
    variances = (np.asarray(sigmas, np.float64) * 2) ** 2
    order = scores.argsort(kind="stable")[::-1]  # ties: the last first, as mmpose's (insertion-sorted) argsort
    keep = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        d = kpts[rest, :, :2] - kpts[i, None, :, :2]
        e = (d[..., 0] ** 2 + d[..., 1] ** 2) / variances / ((areas[i] + areas[rest])[:, None] / 2 + np.spacing(1)) / 2
        oks = (np.exp(-e).sum(-1) / e.shape[-1]).astype(np.float32)
        order = rest[oks <= threshold]
    return keep


def rescore_and_nms(people: list[dict], vis_thr: float, oks_thr: float, sigmas: Sequence[float]) -> list[dict]:
    """One image's people (`{"keypoints": K×3, "box_score", "area", ...}`) → those OKS-NMS keeps, in the order
    kept, each with its rescored `"score"` (mmpose's COCO evaluation)."""
    if not people:
        return []
    scores = rescore(np.stack([p["keypoints"] for p in people]), [p["box_score"] for p in people], vis_thr)
    people = [dict(p, score=score) for p, score in zip(people, scores)]
    return [people[i] for i in oks_nms(people, oks_thr, sigmas)]


def estimate_poses(model: nn.Module, image: np.ndarray, boxes: Sequence[Sequence[float]], data_cfg: Mapping,
                   test_cfg: Mapping, flip_pairs: Sequence[Sequence[int]], sigmas: Sequence[float]) -> list[dict]:
    """The test pipeline (crops, flip-tested heatmaps, keypoints, rescoring, OKS-NMS) on one RGB uint8 image and its
    person boxes ((x, y, w, h[, score])): the people kept, in order, as `{"index" (of the box), "box", "keypoints":
    K×3 (x, y, confidence), "box_score", "score", "area", "center", "scale"}`."""
    if not len(boxes):
        return []
    batch = person_crops(image, boxes, data_cfg)
    heat = topdown_heatmaps(model, batch["img"], flip_pairs, bool(test_cfg["flip"]), bool(test_cfg["shift_heatmap"]))
    coords, maxvals = decode_heatmaps(heat, batch["center"], batch["scale"], test_cfg["post_process"],
                                      int(test_cfg["modulate_kernel"]))
    people = [{"index": i, "box": [float(v) for v in box[:4]],
               "keypoints": np.concatenate([coords[i], maxvals[i][:, None]], 1), "box_score": batch["score"][i],
               "area": batch["area"][i], "center": batch["center"][i], "scale": batch["scale"][i]}
              for i, box in enumerate(boxes)]
    return rescore_and_nms(people, float(test_cfg["vis_thr"]), float(test_cfg["oks_thr"]), sigmas)
