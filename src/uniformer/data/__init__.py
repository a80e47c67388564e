"""Data pipeline for UniFormer: annotation formats, PyAV video decoding, sampling, augmentation.

Public API (the engine codes against exactly this):

* :func:`build_dataset` ``(cfg, split) -> Dataset`` with items ``{"input", "label", "index", "failures"}``;
* :func:`collate` for those items;
* :func:`build_mixup` ``(cfg, num_classes) -> callable | None`` (works on 4-D and 5-D batches);
* :func:`generate_demo_dataset` for the built-in temporal-order demo dataset;
* :func:`class_names` of the datasets the released weights were trained on;
* :func:`benchmark_pipeline` plus :func:`make_synthetic_video` / :func:`make_benchmark_dataset`.

Config keys are documented in :mod:`uniformer.data.config`.
"""

from .benchmark import benchmark_pipeline, make_benchmark_dataset, make_synthetic_video
from .config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, parse_data_config, resolved_data_config
from .datasets import (
    ClassificationDataset,
    ImageClassificationDataset,
    VideoClassificationDataset,
    build_dataset,
    collate,
)
from .demo import generate_demo_dataset
from .labels import class_names
from .mixup import ClipMixup, build_mixup
from .video_io import SampleLoadError, VideoDecodeError, VideoReader

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassificationDataset",
    "ClipMixup",
    "DataConfig",
    "ImageClassificationDataset",
    "SampleLoadError",
    "VideoClassificationDataset",
    "VideoDecodeError",
    "VideoReader",
    "benchmark_pipeline",
    "build_dataset",
    "build_mixup",
    "class_names",
    "collate",
    "generate_demo_dataset",
    "make_benchmark_dataset",
    "make_synthetic_video",
    "parse_data_config",
    "resolved_data_config",
]
