"""Reading images and label maps so that a bad file is reported by its id and skipped, never fatal: a missing
or undecodable file raises `BadSample`, which a dataset logs (naming the sample id and file) and turns into a
None sample that the collate functions drop."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from uniformer.engine.config import expand_path

__all__ = ["resolve_path", "BadSample", "read_image", "read_label_map", "list_images", "readable_images",
           "IMAGE_SUFFIXES", "report_bad"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def resolve_path(cfg: Mapping, path: str | os.PathLike | None) -> Path | None:
    """`path` relative to `data.root` (absolute and `~` paths are kept); `data.root` itself is relative to the
    working directory, as in the original toolboxes."""
    if path is None:
        return None
    p, root = Path(expand_path(str(path))), cfg.get("data", {}).get("root")
    return p if p.is_absolute() or root is None else Path(expand_path(str(root))) / p


class BadSample(RuntimeError):
    """A sample that cannot be used; the message names its id and file."""


def report_bad(logger: logging.Logger, what: str) -> None:
    logger.warning("skipped: %s", what)


def _read(path: str | os.PathLike, who: str, convert) -> np.ndarray:
    """`convert(image)` of the file at `path`; BadSample naming `who` when it is missing or cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            return convert(im)
    except FileNotFoundError:
        raise BadSample(f"{who}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSample(f"{who}: cannot be decoded ({type(e).__name__}: {e})") from None


def read_image(path: str | os.PathLike, sample_id=None) -> np.ndarray:
    """An RGB uint8 H×W×3 array, turned upright by its EXIF orientation tag as mmcv's `imread(flag="color")`
    (OpenCV's IMREAD_COLOR) did for the original detection/segmentation/pose pipelines; BadSample naming
    `sample_id` and the file when it cannot be read."""
    who = f"image {sample_id!r} ({path})" if sample_id is not None else f"image {path}"
    return _read(path, who, lambda im: np.asarray(ImageOps.exif_transpose(im).convert("RGB")))


def read_label_map(path: str | os.PathLike, sample_id=None) -> np.ndarray:
    """A label PNG as an H×W integer array (palette images give their indices, not colours)."""
    who = f"label map {sample_id!r} ({path})" if sample_id is not None else f"label map {path}"

    def labels(im: Image.Image) -> np.ndarray:
        if im.mode in ("RGB", "RGBA"):
            raise BadSample(f"{who}: an {im.mode} image; label maps must be single-channel (L, P or I) PNGs")
        return np.asarray(im).astype(np.int64)

    return _read(path, who, labels)


def list_images(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """An image file, a folder (its images, sorted) or a list of those → image paths."""
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    if not out:
        raise FileNotFoundError(f"no images found in {inputs}")
    return out


def readable_images(inputs: str | os.PathLike | Iterable[str | os.PathLike],
                    results: list) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, image) for every image named by `inputs` (files or folders); an unreadable one is logged
    and recorded in `results` as {"image", "error"} instead, so prediction goes on."""
    for path in list_images(inputs):
        try:
            image = read_image(path)
        except BadSample as e:
            report_bad(logging.getLogger(__name__), str(e))
            results.append({"image": str(path), "error": str(e)})
            continue
        yield path, image
