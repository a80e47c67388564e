"""The recipe `uniformer demo` trains on the built-in video dataset."""
from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_DEMO_CACHE = "~/.cache/uniformer/demo_data"


def demo_recipe(data: Mapping) -> dict:
    """The small recipe `uniformer demo` trains on the built-in dataset (`data`: generate_demo_dataset's result).

    Tuned to reach >= 0.9 validation top-1 within minutes on two CPU cores: a narrow video UniFormer
    (one block per stage) on 8 frames of 64x64, AdamW 1e-3 with one warm-up epoch and cosine decay over
    20 epochs. configs/demo.yaml is the same recipe as a file.
    """
    size = int(data.get("size", 64))
    workers = 1
    return {
        "description": "built-in temporal-order demo: tiny video UniFormer trained from scratch",
        "seed": 0,
        "model": {"name": "uniformer_video_small", "drop_path_rate": 0.0,
                  "kwargs": {"depths": [1, 1, 1, 1], "embed_dims": [32, 64, 128, 256], "head_dim": 32}},
        "data": {
            "format": "video_list", "root": data["root"], "train_list": data["train_list"],
            "val_list": data["val_list"], "class_names": data["class_names"],
            "num_frames": 8, "sampling": "uniform", "input_size": size, "short_side": size,
            "scale_jitter": [size, int(size * 1.25)], "hflip": False, "rand_augment": None, "random_erasing": 0.0,
            "test_clips": 1, "test_crops": 1, "batch_size": 16, "num_workers": workers, "label_smoothing": 0.1,
        },
        "train": {"epochs": 20, "amp": "none", "clip_grad": 5.0,
                  # one compute thread per core the data worker leaves free: extra threads spin on busy cores
                  "threads": max(1, min(8, (os.cpu_count() or 1) - workers))},
        "optim": {"lr": 1e-3, "weight_decay": 0.05},
        "sched": {"name": "cosine", "warmup_epochs": 1, "warmup_lr": 1e-5, "min_lr": 1e-5},
        "checkpoint": {"every": 1, "keep_last": 1},
        "eval": {"split": "val"},
    }
