"""Demo dataset generation (tiny size), its caching and temporal-only labels; pipeline benchmark; config errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from uniformer.data import (
    benchmark_pipeline,
    build_dataset,
    generate_demo_dataset,
    make_benchmark_dataset,
    make_synthetic_video,
    parse_data_config,
)
from uniformer.data.demo import CLASSES, render_clip
from uniformer.data.video_io import VideoReader, read_all_frames

TINY = {"num_train": 8, "num_val": 4, "num_frames": 8, "size": 32}


def test_demo_dataset_generation_and_cache(tmp_path):
    info = generate_demo_dataset(tmp_path / "demo", **TINY)
    assert info["generated"] and info["num_classes"] == 4 and info["classes"] == list(CLASSES)
    lines = Path(info["train_list"]).read_text().split("\n")
    lines = [ln for ln in lines if ln]
    assert len(lines) == 8 and sorted(int(ln.split()[1]) for ln in lines) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert Path(info["class_names"]).read_text().split() == list(CLASSES)
    first = Path(info["root"]) / lines[0].split()[0]
    with VideoReader(first) as reader:
        assert reader.num_frames == 8 and reader.get_frames([0, 7]).shape == (2, 32, 32, 3)
    # cached: second call returns at once without rewriting anything
    mtime = first.stat().st_mtime_ns
    start = time.perf_counter()
    again = generate_demo_dataset(tmp_path / "demo", **TINY)
    assert not again["generated"] and time.perf_counter() - start < 1.0
    assert first.stat().st_mtime_ns == mtime
    # the suggested data config builds and yields clips; flipping is off (it would swap the classes)
    cfg = info["data_config"]
    assert cfg["hflip"] is False
    train = build_dataset(cfg, "train")
    assert train.num_classes == 4 and train[0]["input"].shape == (3, 8, 32, 32)
    # different parameters regenerate
    before = read_all_frames(first)
    changed = generate_demo_dataset(tmp_path / "demo", **{**TINY, "seed": 1})
    assert changed["generated"]
    assert not np.array_equal(before, read_all_frames(first))


def test_demo_generation_is_deterministic(tmp_path):
    a = generate_demo_dataset(tmp_path / "a", **{**TINY, "num_train": 4, "num_val": 1})
    b = generate_demo_dataset(tmp_path / "b", **{**TINY, "num_train": 4, "num_val": 1})
    c = generate_demo_dataset(tmp_path / "c", **{**TINY, "num_train": 4, "num_val": 1, "seed": 3})
    rel = "videos/train/000002.mp4"
    fa, fb, fc = (read_all_frames(Path(d["root"]) / rel) for d in (a, b, c))
    assert np.array_equal(fa, fb)
    assert not np.array_equal(fa, fc)


def test_single_frames_do_not_reveal_the_class():
    """Opposite classes drawn from the same random state share their first frame exactly; motion differs."""
    for seed in range(3):
        right = render_clip(0, np.random.default_rng(seed), num_frames=8, size=32)
        left = render_clip(1, np.random.default_rng(seed), num_frames=8, size=32)
        cw = render_clip(2, np.random.default_rng(seed), num_frames=8, size=32)
        ccw = render_clip(3, np.random.default_rng(seed), num_frames=8, size=32)
        assert np.array_equal(right[0], left[0]) and np.array_equal(cw[0], ccw[0])
        assert not np.array_equal(right[-1], left[-1]) and not np.array_equal(cw[-1], ccw[-1])
        # moving and rotating clips start from the same scene (only the per-frame noise differs)
        assert np.abs(right[0].astype(int) - cw[0].astype(int)).mean() < 12


def test_demo_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        generate_demo_dataset(tmp_path, num_train=2, num_val=1, size=33)
    with pytest.raises(ValueError, match="num_train"):
        generate_demo_dataset(tmp_path, num_train=0)


def test_benchmark_pipeline_on_synthetic_video(tmp_path):
    meta = make_synthetic_video(tmp_path / "long.mp4", seconds=1.0, height=48, fps=20)
    assert meta["width"] == 86 and meta["num_frames"] == 20
    with VideoReader(tmp_path / "long.mp4") as reader:
        assert reader.num_frames == 20 and reader.get_frames([19]).shape == (1, 48, 86, 3)
    cfg = make_benchmark_dataset(tmp_path / "bench", num_videos=2, seconds=0.5, height=48, fps=20)
    cfg.update(num_frames=4, stride=2, input_size=32, scale_jitter=[36, 48])
    result = benchmark_pipeline(cfg, split="train", num_workers=0, batches=2, batch_size=2)
    assert result["clips_per_s"] > 0 and result["timed_clips"] == 4 and result["failures"] == 0
    assert result["input_shape"] == [3, 4, 32, 32] and result["num_samples"] == 2


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="'format'"):
        parse_data_config({"format": "videos"})
    with pytest.raises(ValueError, match="'test_crops'"):
        parse_data_config({"format": "video_list", "test_crops": 2})
    with pytest.raises(ValueError, match="'short_side'"):
        parse_data_config({"format": "video_list", "input_size": 224, "short_side": 128})
    with pytest.raises(ValueError, match="'rand_augment'"):
        parse_data_config({"format": "video_list", "rand_augment": "rand-q9"})
    with pytest.raises(ValueError, match="'scale_jitter'"):
        parse_data_config({"format": "video_list", "scale_jitter": [320, 256]})
    with pytest.raises(ValueError, match="'num_frames'"):
        parse_data_config({"format": "video_list", "num_frames": 0})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_frame'\]"):  # an error, not a warning
        parse_data_config({"format": "video_list", "num_frame": 8})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['batch_size'\]"):  # train.batch_size, as every task
        parse_data_config({"format": "video_list", "batch_size": 8})
    with pytest.warns(UserWarning, match="hflip"):
        parse_data_config({"format": "sthv2", "hflip": True})
    cfg = parse_data_config({"format": "image_folder", "mixup": 0.8})
    assert cfg.random_resized_crop and cfg.hflip and cfg.short_side == 256 and cfg.extra["mixup"] == 0.8


def test_dataloader_shuffled_epochs_differ(tmp_path):
    info = generate_demo_dataset(tmp_path / "demo", **TINY)
    ds = build_dataset({**info["data_config"], "scale_jitter": [32, 48]}, "train")
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=0, collate_fn=lambda b: b)
    first = [item["input"] for batch in loader for item in batch]
    second = [item["input"] for batch in loader for item in batch]
    assert len(first) == 8 and any(not torch.equal(a, b) for a, b in zip(first, second))


def test_file_reading_config_keeps_format_defaults():
    from uniformer.data.config import file_reading_config

    sth = file_reading_config({"format": "sthv2", "num_frames": 8})
    assert sth["format"] == "video_list" and sth["channel_order"] == "BGR" and sth["sampling"] == "uniform"
    assert sth["target_fps"] == 30 and sth["mean"] == [0.45] * 3 and sth["short_side"] == 224
    again = parse_data_config(sth)  # as a video_list config it reads files the same way
    assert (again.channel_order, again.sampling, again.target_fps) == ("BGR", "uniform", 30)
    assert file_reading_config({"format": "frame_folder"})["target_fps"] is None
    img = file_reading_config({"format": "image_folder", "input_size": 160})
    assert img == {"format": "image_list", "input_size": 160, "short_side": 182, "test_crops": 1,
                   "channel_order": "RGB", "interpolation": "bicubic", "view_aggregation": "sum_logits",
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
