"""Throughput of the input pipeline (decode + sampling + augmentation), for ``uniformer benchmark --data``; the
synthetic videos (10 s at 320p by default, Kinetics-like) measure it without a real dataset."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import parse_data_config, resolved_data_config
from .datasets import build_dataset, collate
from .video_io import write_video


def make_synthetic_video(path: str | Path, *, seconds: float = 10.0, height: int = 320, width: int | None = None,
                         fps: int = 30, codec: str | None = None, gop: int | None = None,
                         seed: int = 0) -> dict[str, Any]:
    """Write a moving-pattern MP4 (``width`` defaults to 16:9, rounded to even); returns its properties."""
    if height < 16 or height % 2:
        raise ValueError(f"make_synthetic_video: height must be an even number >= 16, got {height}")
    width = width if width is not None else 2 * int(round(height * 16 / 9 / 2))
    if width % 2:
        raise ValueError(f"make_synthetic_video: width must be even, got {width}")
    num_frames = max(1, int(round(seconds * fps)))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.uniform(0, 60, size=(height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8, 1), dtype=np.float32))[:height, :width]

    def frames():
        for t in range(num_frames):
            phase = 2 * math.pi * t / fps
            r = 127 + 100 * np.sin(xx / 23.0 + phase)
            g = 127 + 100 * np.sin(yy / 17.0 - 0.7 * phase)
            b = 127 + 100 * np.sin((xx + yy) / 31.0 + 0.5 * phase)
            frame = np.stack([r, g, b], axis=-1) + texture
            x0 = int((t * 7) % max(1, width - 40))
            frame[height // 3 : height // 3 + 40, x0 : x0 + 40] = (255, 255, 255)
            yield np.clip(frame, 0, 255).astype(np.uint8)

    used = write_video(path, frames(), fps, codec=codec, gop=gop)
    return {"path": str(path), "num_frames": num_frames, "fps": fps, "height": height, "width": width, "codec": used}


def make_benchmark_dataset(root: str | Path, *, num_videos: int = 4, seconds: float = 10.0, height: int = 320,
                           fps: int = 30, num_classes: int = 2) -> dict[str, Any]:
    """Write (or reuse) ``num_videos`` synthetic long videos and a list file; returns a ``data:`` config for them
    with Kinetics-style training settings."""
    root = Path(root).expanduser().resolve()
    lines = []
    for i in range(num_videos):
        rel = f"synthetic_{height}p_{seconds:g}s_{i:03d}.mp4"
        if not (root / rel).is_file():
            tmp = root / f".{rel}.tmp.mp4"
            make_synthetic_video(tmp, seconds=seconds, height=height, fps=fps, seed=i)
            tmp.replace(root / rel)
        lines.append(f"{rel} {i % num_classes}\n")
    (root / "benchmark.txt").write_text("".join(lines), encoding="utf-8")
    return {"format": "video_list", "root": str(root), "train_list": str(root / "benchmark.txt"),
            "val_list": str(root / "benchmark.txt"), "num_classes": num_classes, "num_frames": 16, "sampling": "dense",
            "stride": 4, "input_size": 224, "scale_jitter": [256, 320], "hflip": True,
            "rand_augment": "rand-m7-n4-mstd0.5-inc1", "random_erasing": 0.25}


def benchmark_pipeline(cfg: Mapping[str, Any], split: str = "train", num_workers: int = 2, batches: int = 10,
                       batch_size: int = 8, warmup_batches: int = 1, seed: int = 0) -> dict[str, Any]:
    """Clips (or images) per second through a DataLoader for ``split`` of the ``data:`` config ``cfg``, with
    ``failures`` and ``failed_paths``; the first ``warmup_batches`` (worker start-up, file caches) are not timed."""
    if batches < 1 or batch_size < 1 or num_workers < 0 or warmup_batches < 0:
        raise ValueError("benchmark_pipeline: batches and batch_size must be >= 1, workers/warmup >= 0")
    data_cfg = parse_data_config(cfg)
    dataset = build_dataset(data_cfg, split)
    total = batches + warmup_batches
    items = max(1, batch_size // dataset.samples_per_item)  # a batch counts clips; an item may hold several
    # Sample with replacement so any dataset size yields the requested number of batches.
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=total * items,
                                             generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=items, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                        drop_last=True)
    failed: list[str] = []
    timed_clips = 0
    iterator = iter(loader)
    for i in range(total):
        if i == warmup_batches:
            start = time.perf_counter()
        batch = next(iterator)
        failed.extend(batch["failures"])
        shape = tuple(batch["input"].shape[1:])
        if i >= warmup_batches:
            timed_clips += batch["input"].shape[0]
    elapsed = time.perf_counter() - start
    del iterator
    return {"clips_per_s": timed_clips / elapsed if elapsed > 0 else float("inf"),
            "seconds_per_batch": elapsed / batches, "timed_batches": batches, "timed_clips": timed_clips,
            "seconds": elapsed, "batch_size": batch_size, "num_sample": data_cfg.num_sample if split == "train" else 1,
            "num_workers": num_workers, "split": split, "input_shape": list(shape),
            "num_samples": len(dataset), "failures": len(failed), "failed_paths": failed}


def benchmark_num_sample(cfg: Mapping[str, Any], num_workers: int = 2, batches: int = 10, batch_size: int = 8,
                         rounds: int = 3, seed: int = 0) -> dict[str, Any]:
    """Training clips/s with ``cfg``'s ``num_sample`` (``clips_per_s``) against ``num_sample = 1``
    (``clips_per_s_num_sample_1``), rounds interleaved, best round of each, their ``ratio`` and every round:
    repeated augmentation decodes a video once for its clips, so clips/s should rise."""
    data_cfg = parse_data_config(cfg)
    if data_cfg.num_sample < 2:
        raise ValueError("benchmark_num_sample: data.num_sample must be >= 2 to compare it with 1")
    base = resolved_data_config(cfg)
    configs = {data_cfg.num_sample: base, 1: {**base, "num_sample": 1}}
    measured: dict[int, list[float]] = {n: [] for n in configs}
    for r in range(rounds):
        for n, c in configs.items():
            result = benchmark_pipeline(c, "train", num_workers, batches, batch_size, seed=seed + r)
            measured[n].append(result["clips_per_s"])
    best = {n: max(v) for n, v in measured.items()}
    return {"num_sample": data_cfg.num_sample, "clips_per_s": best[data_cfg.num_sample],
            "clips_per_s_num_sample_1": best[1], "ratio": best[data_cfg.num_sample] / best[1],
            "rounds": [{"num_sample": n, "clips_per_s": v} for n in configs for v in measured[n]],
            "batch_size": batch_size, "num_workers": num_workers, "timed_batches": batches}
