"""The weights the original UniFormer project released: hub file, dataset and test recipe per `name.tag`.

One table serves timm's pretrained configs, `uniformer models --pretrained` and `uniformer predict --model
NAME.TAG`, which reads a clip as the original evaluated it (`ReleasedWeights.data_config()`: the `data:` keys
of its test protocol, checked in `tests/conformance/test_classification_reference.py`).

`hub_evidence` says why the hub file name is believed: public code downloads exactly that file. An empty
string marks a name that could not be confirmed there: the file's name in the original Google Drive model
zoo, which the hub may hold under another name or not at all.
"""
from __future__ import annotations

from dataclasses import dataclass

from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

VIDEO_MEAN = (0.45, 0.45, 0.45)  # SlowFast's defaults, which the original video models were trained with
VIDEO_STD = (0.225, 0.225, 0.225)

__all__ = ["ReleasedWeights", "RELEASED_WEIGHTS", "released_weights", "timm_pretrained_cfg"]

IMAGE_HUB = "Sense-X/uniformer_image"
VIDEO_HUB = "Sense-X/uniformer_video"
_CODE = "public code downloads this file from the hub"


@dataclass(frozen=True)
class ReleasedWeights:
    """One released checkpoint and the recipe its top-1 was measured with."""

    file: str
    dataset: str  # a name `uniformer.data.class_names` knows
    num_classes: int
    top1: float  # from the original model zoo, with the views below
    frames: int = 1  # 1 for images
    stride: int | None = None  # dense sampling stride; None: one frame from each of `frames` segments
    input_size: int = 224
    short_side: int = 256  # test resize of the short side
    crops: int = 1
    clips: int = 1
    hub_evidence: str = ""
    channel_order: str = "RGB"  # the network's input channels (the original SSv2 models read BGR)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def is_video(self) -> bool:
        return self.frames > 1

    @property
    def hub(self) -> str:
        return VIDEO_HUB if self.is_video else IMAGE_HUB

    @property
    def confirmed(self) -> bool:
        return bool(self.hub_evidence)

    @property
    def views(self) -> str:
        """frames × crops × clips, as the original model zoo writes it (images: the crop size)."""
        return f"{self.frames}x{self.crops}x{self.clips}" if self.is_video else f"{self.input_size}²"

    @property
    def sampling(self) -> str:
        """The original's sampling rule: `dense` (Kinetics: frames x stride) or `uniform` (Sth: segments)."""
        return "-" if not self.is_video else "dense" if self.stride else "uniform"

    @property
    def normalisation(self) -> str:
        """mean / std: "imagenet", or one value each when all channels share it."""
        if tuple(self.mean) == tuple(IMAGENET_MEAN) and tuple(self.std) == tuple(IMAGENET_STD):
            return "imagenet"

        def fmt(v):
            return f"{v[0]:g}" if len(set(v)) == 1 else "(" + ", ".join(f"{x:g}" for x in v) + ")"
        return f"{fmt(self.mean)}/{fmt(self.std)}"

    def data_config(self) -> dict:
        """The `data:` keys of this package's test transform that reproduce the original evaluation.

        Videos are read as files (`video_list`); the Something-Something tags number a file's frames
        at 30 fps, as the original's extracted frame folders (`target_fps`).
        """
        common = {"input_size": self.input_size, "short_side": self.short_side, "test_crops": self.crops,
                  "channel_order": self.channel_order, "mean": list(self.mean), "std": list(self.std),
                  "view_aggregation": "sum_logits"}
        if not self.is_video:
            return {"format": "image_list", **common, "interpolation": "bicubic"}
        sampling = {"sampling": "dense", "stride": self.stride} if self.stride else {"sampling": "uniform"}
        fps = {} if self.stride else {"target_fps": 30}
        return {"format": "video_list", "num_frames": self.frames, **sampling, **fps, **common,
                "test_clips": self.clips, "interpolation": "bilinear"}


def _image(file: str, top1: float, size: int = 224, evidence: str = "", **kw) -> ReleasedWeights:
    # the original's build_transform(is_train=False): resize int(256 / 224 * size), centre crop (light
    # models at 128 / 160 / 192 too: 146 / 182 / 219); token labeling at 384: crop_pct 1.0
    short = size if size == 384 else int(256 / 224 * size)
    return ReleasedWeights(file, "imagenet-1k", 1000, top1, input_size=size, short_side=short,
                           hub_evidence=evidence, **kw)


def _kinetics(file: str, classes: int, top1: float, frames: int, stride: int, evidence: str = "") -> ReleasedWeights:
    # Kinetics test views of the original: short side 224 (its test asserts short side = crop size), one
    # centre crop of 224, 4 clips spanning frames x stride frames each; RGB; SlowFast mean/std 0.45/0.225
    return ReleasedWeights(file, f"kinetics-{classes}", classes, top1, frames, stride, short_side=224, clips=4,
                           hub_evidence=evidence, mean=VIDEO_MEAN, std=VIDEO_STD)


def _sthv2(file: str, top1: float, frames: int, evidence: str = "") -> ReleasedWeights:
    # Something-Something test views: one frame per segment of the 30 fps frames, short side 224,
    # 3 crops x 1 clip; BGR (OpenCV frames, never converted); mean/std 0.45/0.225
    return ReleasedWeights(file, "something-something-v2", 174, top1, frames, None, short_side=224, crops=3,
                           hub_evidence=evidence, channel_order="BGR", mean=VIDEO_MEAN, std=VIDEO_STD)


RELEASED_WEIGHTS: dict[str, ReleasedWeights] = {
    # ImageNet-1K (image_classification/README.md of the original)
    "uniformer_small.in1k": _image("uniformer_small_in1k.pth", 82.9, evidence=_CODE),
    "uniformer_small_plus.in1k": _image("uniformer_small_plus_in1k.pth", 83.4),
    "uniformer_small_plus_dim64.in1k": _image("uniformer_small_plus_dim64_in1k.pth", 83.4),
    "uniformer_base.in1k": _image("uniformer_base_in1k.pth", 83.8, evidence=_CODE),
    "uniformer_base_ls.in1k": _image("uniformer_base_ls_in1k.pth", 83.9),
    # token labeling: their own architectures (aux head; head_dim 32 for S, S+ and B)
    "uniformer_small_tl.in1k": _image("uniformer_small_tl_224.pth", 83.4),
    "uniformer_small_tl.in1k_384": _image("uniformer_small_tl_384.pth", 84.6, 384),
    "uniformer_small_plus_tl.in1k": _image("uniformer_small_plus_tl_224.pth", 83.9),
    "uniformer_small_plus_tl.in1k_384": _image("uniformer_small_plus_tl_384.pth", 84.9, 384),
    "uniformer_base_tl.in1k": _image("uniformer_base_tl_224.pth", 85.1),
    "uniformer_base_tl.in1k_384": _image("uniformer_base_tl_384.pth", 86.0, 384),
    "uniformer_large_ls_tl.in1k": _image("uniformer_large_ls_tl_224.pth", 85.6),
    "uniformer_large_ls_tl.in1k_384": _image("uniformer_large_ls_tl_384.pth", 86.3, 384),
    # light models (TPAMI version)
    "uniformer_xxs.in1k_128": _image("uniformer_xxs_128_in1k.pth", 76.8, 128),
    "uniformer_xxs.in1k_160": _image("uniformer_xxs_160_in1k.pth", 79.1, 160),
    "uniformer_xxs.in1k_192": _image("uniformer_xxs_192_in1k.pth", 79.9, 192),
    "uniformer_xxs.in1k_224": _image("uniformer_xxs_224_in1k.pth", 80.6),
    "uniformer_xs.in1k_192": _image("uniformer_xs_192_in1k.pth", 81.5, 192),
    "uniformer_xs.in1k_224": _image("uniformer_xs_224_in1k.pth", 82.0),
    # Kinetics (video_classification/README.md: frames x crops x clips = N x 1 x 4). The hub-confirmed
    # 16x8 entries come first: the first tag of a name is its default.
    "uniformer_video_small.k400_16x8": _kinetics("uniformer_small_k400_16x8.pth", 400, 80.8, 16, 8, _CODE),
    "uniformer_video_base.k400_16x8": _kinetics("uniformer_base_k400_16x8.pth", 400, 81.7, 16, 8, _CODE),
    "uniformer_video_small.k400_8x8": _kinetics("uniformer_small_k400_8x8.pth", 400, 78.4, 8, 8),
    "uniformer_video_small.k400_16x4": _kinetics("uniformer_small_k400_16x4.pth", 400, 80.8, 16, 4),
    "uniformer_video_small.k600_16x4": _kinetics("uniformer_small_k600_16x4.pth", 600, 82.8, 16, 4),
    "uniformer_video_small.k600_16x8": _kinetics("uniformer_small_k600_16x8.pth", 600, 82.7, 16, 8, _CODE),
    "uniformer_video_base.k400_8x8": _kinetics("uniformer_base_k400_8x8.pth", 400, 79.8, 8, 8),
    "uniformer_video_base.k400_16x4": _kinetics("uniformer_base_k400_16x4.pth", 400, 82.0, 16, 4),
    "uniformer_video_base.k400_32x4": _kinetics("uniformer_base_k400_32x4.pth", 400, 82.9, 32, 4),
    "uniformer_video_base.k600_16x4": _kinetics("uniformer_base_k600_16x4.pth", 600, 84.0, 16, 4),
    "uniformer_video_base.k600_16x8": _kinetics("uniformer_base_k600_16x8.pth", 600, 83.4, 16, 8),
    "uniformer_video_base.k600_32x4": _kinetics("uniformer_base_k600_32x4.pth", 600, 84.5, 32, 4, _CODE),
    # Something-Something V2, Kinetics-600 pre-trained (N x 3 x 1)
    "uniformer_video_small.sthv2_16": _sthv2("uniformer_small_sthv2_16_prek600.pth", 69.4, 16),
    "uniformer_video_base.sthv2_32": _sthv2("uniformer_base_sthv2_32_prek600.pth", 71.2, 32, _CODE),
}


released_weights = RELEASED_WEIGHTS.get  # the entry of `name.tag`, None for an unknown tag or a name without one


def timm_pretrained_cfg(weights: ReleasedWeights, **common) -> dict:
    """timm's pretrained config of one entry: the hub file, class count, input size and readable notes."""
    size = weights.input_size
    notes = [f"dataset={weights.dataset}", f"top1={weights.top1}", f"test_views={weights.views}"]
    if weights.is_video:
        notes += [f"frames={weights.frames}", f"stride={weights.stride}" if weights.stride else "sampling=uniform",
                  f"channel_order={weights.channel_order}"]
    if not weights.confirmed:
        notes.append("hub_file=unconfirmed")
    return {**common, "hf_hub_id": weights.hub, "hf_hub_filename": weights.file, "num_classes": weights.num_classes,
            "input_size": (3, size, size), "crop_pct": size / weights.short_side, "mean": tuple(weights.mean),
            "interpolation": "bilinear" if weights.is_video else "bicubic",
            "std": tuple(weights.std), "notes": tuple(notes)}
