"""Spatial transforms: ``(T, H, W, 3)`` uint8 RGB frames (an image is a one-frame clip) to a normalised float32
``(C, T, H, W)``, or ``(V, C, T, H, W)`` for multi-view testing. Every random decision (crop, flip, RandAugment,
erased box) is drawn once per clip and applied to all its frames: per-frame jitter would fake motion.

Training, in the original's order: videos (SlowFast ``_aug_frame``) RandAugment on the decoded frames, the crop
(a random-resized box, or scale jitter: a random ``input_size`` square after resizing the short side to a size
in ``scale_jitter``, done as cropping the equivalent box) resized by ``F.interpolate`` without antialiasing, the
flip; images (timm ``transforms_imagenet_train``) the crop resized antialiased like PIL, the flip, RandAugment
(bicubic in both). Then normalisation, ``channel_order`` and timm random erasing of one box in every frame.

Test and val reproduce the original evaluation (``shared/conformance``): videos (SlowFast ``spatial_sampling``)
resize the short side to ``short_side`` (long side ``floor(long / short * short_side)``, no resize when it
matches) by ``F.interpolate`` on float frames and crop at ``ceil((L - size) / 2)`` and ``0`` / ``L - size``;
images (DeiT ``build_transform``) PIL-resize the short side (long side ``int(short_side * long / short)``) and
crop at ``int(round((L - size) / 2))``. Then ``(x / 255 - mean) / std``. ``channel_order: BGR`` reverses the RGB
channels (the original Something-Something networks read OpenCV frames), so ``mean`` / ``std`` are per network
input channel.
"""
from __future__ import annotations

import contextlib
import functools
import math
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import DataConfig


@contextlib.contextmanager
def _global_rng_seeded(seed: int) -> Iterator[Callable[[], None]]:
    """Yield a ``reseed()`` that resets ``random`` and ``numpy.random`` (timm draws from them) to ``seed``; restore
    them on exit."""
    py_state = random.getstate()
    np_state = np.random.get_state()

    def reseed() -> None:
        random.seed(seed)
        np.random.seed(seed)

    try:
        reseed()
        yield reseed
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@functools.lru_cache
def _auto_augment(spec: str, size_min: int, mean: tuple[float, float, float] | None) -> Callable:
    """timm RandAugment (``rand-...``) or AutoAugment policy (``v0``, ``original``, ...) with bicubic resampling."""
    from timm.data.auto_augment import auto_augment_transform, rand_augment_transform

    hparams: dict = {"translate_const": int(size_min * 0.45), "interpolation": Image.BICUBIC}
    if mean is not None:
        hparams["img_mean"] = tuple(min(255, round(255 * m)) for m in mean)
    return (rand_augment_transform if spec.startswith("rand") else auto_augment_transform)(spec, hparams)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", antialias: bool = True) -> torch.Tensor:
    """Resize of a float ``(T, C, H, W)`` tensor to ``size = (h, w)`` (bilinear antialiased by default)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """The original video test resize: short side ``short``, long side ``floor(long / short_in * short)``."""
    if min(height, width) == short:
        return height, width
    if width < height:
        return int(math.floor(float(height) / width * short)), short
    return short, int(math.floor(float(width) / height * short))


def image_resize_size(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: short side ``short``, long side ``int(short * long / short_in)``."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def crop_positions(height: int, width: int, size: int, num_crops: int, *,
                   centre: str = "ceil") -> list[tuple[int, int]]:
    """Top-left corners of ``num_crops`` (1 or 3) square crops along the long side; the centre one at ``ceil((L -
    size) / 2)`` (the original video test) or, with ``centre="round"``, ``int(round(...))`` (torchvision's)."""
    if size > height or size > width:
        raise ValueError(f"crop size {size} exceeds frame size {height}x{width}")
    if centre == "ceil":
        cy, cx = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    elif centre == "round":
        cy, cx = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    else:
        raise ValueError(f"centre must be 'ceil' or 'round', got {centre!r}")
    if num_crops == 1:
        return [(cy, cx)]
    if num_crops != 3:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    if height > width:  # portrait: top, centre, bottom
        return [(0, cx), (cy, cx), (height - size, cx)]
    return [(cy, 0), (cy, cx), (cy, width - size)]  # landscape (and square): left, centre, right


def random_resized_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random box with area fraction in ``scale`` and aspect ratio in ``ratio``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fallback: the largest centred box whose aspect ratio is within range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def scale_jitter_box(height: int, width: int, size: int, jitter: tuple[int, int],
                     rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Box equivalent to: resize short side to S ~ U{jitter}, then a random ``size`` x ``size`` crop."""
    short = min(height, width)
    target_short = int(rng.integers(jitter[0], jitter[1] + 1))
    side = int(round(size * short / target_short))
    side = min(max(side, 1), short)  # S < size would need a crop larger than the frame: use the whole short side
    return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side, side


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")


class ClipTransform:
    """``(T, H, W, 3)`` uint8 frames -> the split's view: train the random augmentations (``rng`` required), val the
    centre crop ``(C, T, H, W)``, test ``(V, C, T, H, W)`` with ``cfg.test_crops`` crops per clip."""

    def __init__(self, cfg: DataConfig, split: str) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        self.cfg = cfg
        self.split = split
        self.size = cfg.input_size
        self.mean_unit = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std_unit = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.mean, self.std = self.mean_unit * 255.0, self.std_unit * 255.0
        self.rand_augment = None
        self.random_erasing = None
        if split == "train" and cfg.rand_augment and not cfg.is_video:
            # timm's image recipe: translation from the crop size, fill with the dataset mean, bicubic
            self.rand_augment = _auto_augment(cfg.rand_augment, self.size, tuple(cfg.mean))
        if split == "train" and cfg.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.random_erasing = RandomErasing(probability=cfg.random_erasing, mode=cfg.random_erasing_mode,
                                                max_count=1, device="cpu")

    @staticmethod
    def _to_tensor(frames: np.ndarray) -> torch.Tensor:
        _check_frames(frames)
        if not frames.flags.writeable or not frames.flags.c_contiguous:
            frames = np.array(frames, copy=True, order="C")  # torch needs a writable array
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # T, C, H, W uint8

    def _normalize(self, x: torch.Tensor, *, test: bool = False) -> torch.Tensor:
        """float RGB ``(T, C, H, W)`` in [0, 255] -> normalised ``(C, T, H, W)`` in ``channel_order``; ``test`` computes
        ``(x / 255 - mean) / std`` as the original's test, training ``(x - 255 mean) / (255 std)``."""
        if self.cfg.channel_order == "BGR":
            x = x.flip(1)
        x = (x / 255.0 - self.mean_unit) / self.std_unit if test else (x - self.mean) / self.std
        return x.permute(1, 0, 2, 3).contiguous()

    def apply_rand_augment(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """Apply one RandAugment draw (fixed by ``seed``) identically to every frame of uint8 ``(T, C, H, W)``."""
        # videos: SlowFast's create_random_augment, translation from the decoded frame size, timm's grey fill
        augment = self.rand_augment or _auto_augment(self.cfg.rand_augment, min(x.shape[-2:]), None)
        out = []
        with _global_rng_seeded(seed) as reseed:
            for frame in x:
                reseed()  # same op choice, magnitudes and interpolation for every frame
                img = Image.fromarray(frame.permute(1, 2, 0).numpy())
                out.append(torch.from_numpy(np.asarray(augment(img), dtype=np.uint8).copy()))
        return torch.stack(out).permute(0, 3, 1, 2)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.split == "train":
            if rng is None:
                raise ValueError("training transforms need a numpy Generator (rng)")
            return self._train(frames, rng)
        return self._test(frames, num_crops=self.cfg.test_crops if self.split == "test" else 1)

    def _train(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        x = self._to_tensor(frames)
        height, width = x.shape[-2:]
        if cfg.is_video and cfg.rand_augment:  # before the crop, as SlowFast's _aug_frame
            x = self.apply_rand_augment(x, int(rng.integers(2**31)))
        if cfg.random_resized_crop:
            top, left, h, w = random_resized_box(height, width, cfg.rrc_scale, cfg.rrc_ratio, rng)
        else:
            top, left, h, w = scale_jitter_box(height, width, self.size, cfg.scale_jitter, rng)
        # videos: SlowFast's F.interpolate(bilinear, no antialias); images: PIL-like antialiased resampling
        x = resize(x[:, :, top : top + h, left : left + w].float(), (self.size, self.size),
                   mode=cfg.interpolation, antialias=not cfg.is_video)
        if cfg.hflip and rng.random() < 0.5:
            x = x.flip(-1)
        if self.rand_augment is not None and not cfg.is_video:
            x = self.apply_rand_augment(x.round_().clamp_(0, 255).to(torch.uint8), int(rng.integers(2**31)))
            x = x.float()
        x = self._normalize(x.clamp(0, 255) if cfg.interpolation == "bicubic" else x)  # bicubic overshoot, as PIL
        if self.random_erasing is not None:
            c, t, h, w = x.shape
            with _global_rng_seeded(int(rng.integers(2**31))):
                self.random_erasing(x.view(c * t, h, w))  # one box for all frames (in place)
        return x

    def _test(self, frames: np.ndarray, num_crops: int) -> torch.Tensor:
        if self.cfg.is_video:
            x, centre = self._test_resize_video(frames), "ceil"
        else:
            x, centre = self._test_resize_images(frames), "round"
        h, w = x.shape[-2:]
        views = [self._normalize(x[:, :, top : top + self.size, left : left + self.size], test=True)
                 for top, left in crop_positions(h, w, self.size, num_crops, centre=centre)]
        return torch.stack(views) if self.split == "test" else views[0]

    def _test_resize_video(self, frames: np.ndarray) -> torch.Tensor:
        """float ``(T, C, H, W)`` in [0, 255]: the original's no-antialias short-side resize (it normalises first;
        resizing first is the same linear map, within 1e-6 on the conformance cases, and normalises only the crops)."""
        x = self._to_tensor(frames).float()
        size = short_side_size(x.shape[-2], x.shape[-1], self.cfg.short_side)
        return resize(x, size, mode=self.cfg.interpolation, antialias=False)

    def _test_resize_images(self, frames: np.ndarray) -> torch.Tensor:
        """float ``(T, C, H, W)`` in [0, 255]: PIL resize of each (uint8) image, as torchvision's ``Resize``."""
        _check_frames(frames)
        h, w = image_resize_size(frames.shape[1], frames.shape[2], self.cfg.short_side)
        resample = Image.Resampling.BICUBIC if self.cfg.interpolation == "bicubic" else Image.Resampling.BILINEAR
        out = []
        for frame in frames:
            img = Image.fromarray(frame)
            if img.size != (w, h):
                img = img.resize((w, h), resample)
            out.append(torch.from_numpy(np.array(img, dtype=np.uint8)))
        return torch.stack(out).permute(0, 3, 1, 2).float()

    def clips(self, frames: np.ndarray, num_clips: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Transform ``num_clips`` clips stored back to back in ``frames``; test views are ordered clip-major."""
        if self.split != "test":
            return self(frames, rng)
        return torch.cat([self._test(f, self.cfg.test_crops) for f in np.split(frames, num_clips)])
