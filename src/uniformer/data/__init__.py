"""Data pipeline for UniFormer classification: annotation formats, PyAV video decoding, sampling, augmentation,
mixup, the built-in demo dataset and an input-pipeline benchmark. Config keys: :mod:`uniformer.data.config`.
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
    "IMAGENET_MEAN", "IMAGENET_STD", "ClassificationDataset", "ClipMixup", "DataConfig", "ImageClassificationDataset",
    "SampleLoadError", "VideoClassificationDataset", "VideoDecodeError", "VideoReader", "benchmark_pipeline",
    "build_dataset", "build_mixup", "class_names", "collate", "generate_demo_dataset", "make_benchmark_dataset",
    "make_synthetic_video", "parse_data_config", "resolved_data_config",
]
