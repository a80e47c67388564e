"""Validated view of the ``data:`` section: :func:`parse_data_config` holds every default, type and cross-key
check, so a typo (an unknown key is an error) or a bad value fails early with a message naming the key. A whole
config holding a ``data:`` mapping (and no ``format`` of its own) is accepted too. Keys (optional unless marked):

* ``format`` (required): ``video_list`` | ``sthv2`` | ``frame_folder`` | ``image_folder`` | ``image_list``.
* ``root`` (``.``): folder relative paths are resolved against (list paths only when they do not exist
  relative to the working directory).
* ``train_list`` / ``val_list`` / ``test_list``: ``path label`` lines or a ``path,label`` CSV (``video_list``,
  ``image_list``); for ``frame_folder`` the original's split lists (``folder num_frames label``, e.g.
  ``somesomev2_rgb_validation_split.txt``) of folders of ``frame_template`` images. ``test_list`` falls back to
  ``val_list``.
* ``labels_file``, ``train_annotations``, ``val_annotations``, ``test_annotations`` (falls back to val): SSv2
  JSON files (``sthv2``); ``video_ext`` (``webm``) the extension of its videos.
* ``train_dir`` / ``val_dir`` / ``test_dir``: class-per-subfolder trees (``image_folder``), defaults ``train`` /
  ``val`` / ``val_dir`` under ``root``.
* ``class_names``: one class name per line (line i = class i); ``num_classes``: used only without class names.
* ``frame_template`` (``frame_folder``): image of 1-based frame ``j`` (``img_{:05d}.jpg`` as SSv2 was
  extracted; SSv1 ships ``{:05d}.jpg``).
* ``num_frames`` (16), ``sampling`` (``uniform`` for ``sthv2`` / ``frame_folder``, else ``dense``: the
  original's ``Sth`` and ``Kinetics`` rules, :mod:`uniformer.data.sampling`), ``stride`` (4, dense only).
* ``target_fps`` (30 for ``sthv2``, else null = native frames): number a video's frames as ``ffmpeg -r
  target_fps`` would extract them before sampling, so a webm gives the frames of the original's 30 fps folders.
* ``input_size`` (224), ``short_side`` (test/val short side: ``input_size`` for videos, as the original's test
  asserts, ``int(256 / 224 * input_size)`` for images, DeiT's crop_pct 0.875).
* ``scale_jitter`` (short-side range of the training crop without ``random_resized_crop``; ``input_size`` x
  [256, 320] / 224), ``random_resized_crop`` (False for videos, True for images: one box of ``rrc_scale`` area
  ([0.08, 1.0]) and ``rrc_ratio`` aspect ([0.75, 1.3333]) for every frame).
* ``hflip`` (False for ``sthv2`` / ``frame_folder``, else True), ``rand_augment`` (a timm ``rand-...`` string,
  an AutoAugment policy such as ``v0``, or null; videos: before the crop, images: after it), ``random_erasing``
  (probability, 0 = off), ``random_erasing_mode`` (``pixel``), ``test_clips`` (1), ``test_crops`` (1 or 3).
* ``channel_order`` (network input order: ``BGR`` for ``sthv2`` / ``frame_folder``, whose original networks
  read OpenCV frames unconverted, else ``RGB``), ``interpolation`` (``bilinear`` for videos, ``bicubic`` for
  images, as the original), ``view_aggregation`` (``sum_logits``, the original's sum over test views, or
  ``mean_softmax``).
* ``num_sample`` (1; clips augmented from one decoded video per training item; ``train.batch_size`` counts clips
  and must be a multiple of it), ``repeated_aug`` (0 = off; DeiT's RASampler repeats).
* ``skip_missing`` (False), ``max_retries`` (10), ``min_video_frames`` (1; shorter videos are unloadable),
  ``seed`` (0), ``decode_threads`` (1; 0 = FFmpeg's choice), ``mean`` / ``std`` per network input channel
  (videos: 0.45 / 0.225, the SlowFast defaults the original video models were trained with; images: ImageNet).
* Mixup keys, read by :func:`uniformer.data.build_mixup`: ``mixup`` / ``cutmix`` (alphas, 0 = off),
  ``cutmix_minmax`` ([min, max] box ratio or null), ``label_smoothing`` (0.1 with mixing, else 0),
  ``mixup_prob`` (1.0), ``mixup_switch_prob`` (0.5: CutMix instead of Mixup when both are on), ``mixup_mode``
  (``batch`` | ``pair`` | ``elem``). Batch size and workers are the recipe's ``train.batch_size`` /
  ``train.num_workers``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VIDEO_MEAN = (0.45, 0.45, 0.45)
VIDEO_STD = (0.225, 0.225, 0.225)

FORMATS = ("video_list", "sthv2", "frame_folder", "image_folder", "image_list")
VIDEO_FORMATS = ("video_list", "sthv2", "frame_folder")
#: formats whose original networks read BGR frames (cv2.imdecode, never converted)
BGR_FORMATS = ("sthv2", "frame_folder")
#: formats sampled one frame per segment (the original's ``Sth``) unless ``sampling`` says otherwise
UNIFORM_FORMATS = ("sthv2", "frame_folder")
SPLITS = ("train", "val", "test")
#: keys that name files or folders (the engine expands ``~`` and variables in them)
PATH_KEYS = ("root", "train_list", "val_list", "test_list", "labels_file", "train_annotations", "val_annotations",
             "test_annotations", "train_dir", "val_dir", "test_dir", "class_names")

_MIXUP_KEYS = frozenset({"mixup", "cutmix", "cutmix_minmax", "label_smoothing", "mixup_prob", "mixup_switch_prob",
                         "mixup_mode"})


@dataclass(frozen=True)
class DataConfig:
    """Parsed, validated data settings (see the module docstring for the meaning of each field)."""

    format: str
    root: str = "."
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    labels_file: str | None = None
    train_annotations: str | None = None
    val_annotations: str | None = None
    test_annotations: str | None = None
    train_dir: str | None = None
    val_dir: str | None = None
    test_dir: str | None = None
    class_names: str | None = None
    num_classes: int | None = None
    video_ext: str = "webm"
    frame_template: str = "img_{:05d}.jpg"
    target_fps: int | None = None
    num_frames: int = 16
    sampling: str = "dense"
    stride: int = 4
    input_size: int = 224
    short_side: int = 224
    scale_jitter: tuple[int, int] = (256, 320)
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    hflip: bool = True
    rand_augment: str | None = None
    random_erasing: float = 0.0
    random_erasing_mode: str = "pixel"
    test_clips: int = 1
    test_crops: int = 1
    channel_order: str = "RGB"
    interpolation: str = "bilinear"
    view_aggregation: str = "sum_logits"
    num_sample: int = 1
    repeated_aug: int = 0
    skip_missing: bool = False
    max_retries: int = 10
    min_video_frames: int = 1
    seed: int = 0
    decode_threads: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_video(self) -> bool:
        return self.format in VIDEO_FORMATS


def _err(key: str, value: Any, what: str) -> ValueError:
    return ValueError(f"data config: key '{key}' = {value!r} is invalid: {what}")


def _as_int(key: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise _err(key, value, "expected an integer")
    value = int(value)
    if minimum is not None and value < minimum:
        raise _err(key, value, f"must be >= {minimum}")
    return value


def _as_float(key: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _err(key, value, "expected a number")
    value = float(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _err(key, value, f"must be in [{lo}, {hi}]")
    return value


def _as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _err(key, value, "expected true or false")
    return value


def _as_pair(key: str, value: Any, kind: type) -> tuple:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _err(key, value, "expected a list of two numbers [min, max]")
    conv = _as_int if kind is int else _as_float
    a, b = (conv(key, v) for v in value)
    if a > b:
        raise _err(key, value, "min must not exceed max")
    return (a, b)


def _as_path(key: str, value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and value):
        raise _err(key, value, "expected a non-empty path string")
    return value


def resolved_data_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data:`` section with every key this package reads, defaults included (what a run records), the mixup
    keys with the defaults :func:`uniformer.data.build_mixup` and the loss use."""
    parsed = parse_data_config(cfg)
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(parsed).items() if k != "extra"}
    if parsed.format != "frame_folder":  # a key of that format only (refused with the others)
        del out["frame_template"]
    mixing = bool(parsed.extra.get("mixup") or parsed.extra.get("cutmix") or parsed.extra.get("cutmix_minmax"))
    defaults = {"mixup": 0.0, "cutmix": 0.0, "cutmix_minmax": None, "label_smoothing": 0.1 if mixing else 0.0,
                "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch"}
    for key, default in defaults.items():
        value = parsed.extra.get(key)
        out[key] = default if value is None else value
    return out


def parse_data_config(cfg: Mapping[str, Any] | DataConfig) -> DataConfig:
    """Validate ``cfg`` (the ``data:`` section) and fill defaults; raises ``ValueError`` naming the bad key."""
    if isinstance(cfg, DataConfig):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"data config must be a mapping (the 'data:' section), got {type(cfg).__name__}")
    if "format" not in cfg and isinstance(cfg.get("data"), Mapping):
        cfg = cfg["data"]  # the whole config was passed: use its data section
    fmt = cfg.get("format")
    if fmt not in FORMATS:
        raise _err("format", fmt, f"expected one of {list(FORMATS)}")
    is_video, uniform = fmt in VIDEO_FORMATS, fmt in UNIFORM_FORMATS
    known = {f for f in DataConfig.__dataclass_fields__ if f != "extra"}
    unknown = sorted(set(cfg) - known - _MIXUP_KEYS)
    if unknown:
        raise ValueError(f"data config: unknown key(s) {unknown} (known: {sorted(known | _MIXUP_KEYS)})")
    # the format-dependent defaults; every other default is DataConfig's
    defaults = {"target_fps": 30 if fmt == "sthv2" else None, "sampling": "uniform" if uniform else "dense",
                "random_resized_crop": not is_video, "hflip": not uniform,
                "channel_order": "BGR" if fmt in BGR_FORMATS else "RGB",
                "interpolation": "bilinear" if is_video else "bicubic",
                "mean": VIDEO_MEAN if is_video else IMAGENET_MEAN, "std": VIDEO_STD if is_video else IMAGENET_STD}

    def get(key: str) -> Any:
        return cfg.get(key, defaults[key] if key in defaults else DataConfig.__dataclass_fields__[key].default)

    out: dict[str, Any] = {"format": fmt, "extra": {k: cfg[k] for k in cfg if k in _MIXUP_KEYS}}
    for key in PATH_KEYS:
        out[key] = _as_path(key, cfg.get(key))
    out["root"] = out["root"] or "."
    for key in ("num_classes", "target_fps"):
        out[key] = None if get(key) is None else _as_int(key, get(key), 1)
    ext = get("video_ext")
    if not isinstance(ext, str) or not ext.strip("."):
        raise _err("video_ext", ext, "expected an extension such as 'webm' or 'mp4'")
    out["video_ext"] = ext.lstrip(".")
    for key, minimum in (("num_frames", 1), ("stride", 1), ("input_size", 1), ("test_clips", 1), ("test_crops", 1),
                         ("num_sample", 1), ("repeated_aug", 0), ("max_retries", 0), ("min_video_frames", 1),
                         ("seed", 0), ("decode_threads", 0)):
        out[key] = _as_int(key, get(key), minimum)
    for key, choices in (("sampling", ("dense", "uniform")), ("random_erasing_mode", ("pixel", "rand", "const")),
                         ("channel_order", ("RGB", "BGR")), ("interpolation", ("bilinear", "bicubic")),
                         ("view_aggregation", ("sum_logits", "mean_softmax"))):
        if get(key) not in choices:
            raise _err(key, get(key), f"expected one of {list(choices)}")
        out[key] = get(key)
    for key in ("random_resized_crop", "hflip", "skip_missing"):
        out[key] = _as_bool(key, get(key))

    template = out["frame_template"] = get("frame_template")
    try:
        ok = isinstance(template, str) and template.format(1) != template.format(2)
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise _err("frame_template", template, "expected a format string of the 1-based frame number, "
                   "such as 'img_{:05d}.jpg'")
    if "frame_template" in cfg and fmt != "frame_folder":
        raise _err("frame_template", template, f"only format 'frame_folder' reads frame images, not {fmt!r}")
    if out["target_fps"] is not None and fmt not in ("video_list", "sthv2"):
        raise _err("target_fps", out["target_fps"], f"only video files are re-numbered, not format {fmt!r}")

    size = out["input_size"]
    out["short_side"] = _as_int("short_side", cfg.get("short_side", size if is_video else int(256 / 224 * size)), 1)
    if out["short_side"] < size:
        raise _err("short_side", out["short_side"], f"must be >= input_size ({size})")
    # the default follows input_size (256-320 at 224, SlowFast's TRAIN_JITTER_SCALES): a fixed 256-320 would cut
    # small crops out of large upscales at other sizes
    default_jitter = [round(size * 256 / 224), round(size * 320 / 224)]
    out["scale_jitter"] = _as_pair("scale_jitter", cfg.get("scale_jitter", default_jitter), int)
    if out["scale_jitter"][0] < 1:
        raise _err("scale_jitter", cfg.get("scale_jitter"), "sizes must be positive")
    out["rrc_scale"] = _as_pair("rrc_scale", get("rrc_scale"), float)
    if not 0 < out["rrc_scale"][0] <= 1 or out["rrc_scale"][1] > 1:
        raise _err("rrc_scale", cfg.get("rrc_scale"), "area fractions must be in (0, 1]")
    out["rrc_ratio"] = _as_pair("rrc_ratio", get("rrc_ratio"), float)
    if out["rrc_ratio"][0] <= 0:
        raise _err("rrc_ratio", cfg.get("rrc_ratio"), "aspect ratios must be positive")

    if uniform and out["sampling"] == "uniform" and out["hflip"]:  # Something-Something's layout
        # (a frame_folder with dense sampling is another dataset, e.g. HMDB51, which the original flips)
        warnings.warn(f"data config: hflip=true with format '{fmt}': Something-Something labels depend on "
                      "left/right direction, so flipping corrupts labels such as 'Pushing something from left to "
                      "right'", stacklevel=2)
    ra = out["rand_augment"] = cfg.get("rand_augment")
    if ra is not None:
        if not isinstance(ra, str) or not ra:
            raise _err("rand_augment", ra, "expected a timm RandAugment string like 'rand-m7-n4-mstd0.5-inc1', "
                       "an AutoAugment policy such as 'v0', or null")
        try:
            from timm.data.auto_augment import auto_augment_transform, rand_augment_transform

            (rand_augment_transform if ra.startswith("rand") else auto_augment_transform)(ra, {})
        except Exception as exc:  # timm raises AssertionError/ValueError/KeyError on bad strings
            raise _err("rand_augment", ra, f"timm cannot parse it ({type(exc).__name__}: {exc})") from exc
    out["random_erasing"] = _as_float("random_erasing", get("random_erasing"), 0.0, 1.0)
    if out["test_crops"] not in (1, 3):
        raise _err("test_crops", out["test_crops"], "expected 1 (centre) or 3 (left/centre/right)")
    for key in ("mean", "std"):
        value = get(key)
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise _err(key, value, "expected three numbers (R, G, B)")
        out[key] = tuple(_as_float(key, v) for v in value)
    if any(s <= 0 for s in out["std"]):
        raise _err("std", cfg.get("std"), "values must be positive")
    return DataConfig(**out)


#: keys that decide how a test file is read (resize, crops, channels, normalisation, views; and frames for videos)
_IMAGE_READING_KEYS = ("input_size", "short_side", "test_crops", "channel_order", "interpolation",
                       "view_aggregation", "mean", "std")
_VIDEO_READING_KEYS = ("num_frames", "sampling", "stride", "target_fps", "test_clips", "decode_threads")


def file_reading_config(cfg: Mapping[str, Any] | DataConfig) -> dict[str, Any]:
    """The resolved keys (``video_list`` / ``image_list``) that read one file as ``cfg``'s test split reads its
    samples: format defaults such as BGR for ``sthv2`` are kept; ``frame_folder`` recipes read video files with
    native frame numbering, as their frames are already extracted."""
    c = parse_data_config(cfg)
    out = {key: getattr(c, key) for key in _IMAGE_READING_KEYS + (_VIDEO_READING_KEYS if c.is_video else ())}
    out.update(mean=list(c.mean), std=list(c.std), format="video_list" if c.is_video else "image_list")
    return out
