"""Repeated augmentation: data.num_sample (one decoded video, N clips in one batch) and data.repeated_aug
(DeiT's RASampler order in the runner's loader); the video random-resized crop of the training path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _data_helpers import write_indexed_video, write_list

from uniformer.data import build_dataset, collate, parse_data_config
from uniformer.data.transforms import ClipTransform
from uniformer.engine.loaders import EpochSampler, items_per_batch, train_loader

TRAIN_CFG = {"batch_size": 4, "num_workers": 0, "pin_memory": False, "prefetch_factor": None}


def _videos(root, n=4):
    for i in range(n):
        write_indexed_video(root / f"v{i}.mp4", 16)
    write_list(root / "train.txt", [f"v{i}.mp4 {i % 2}" for i in range(n)])
    return {"format": "video_list", "root": str(root), "train_list": "train.txt", "num_frames": 4, "stride": 2,
            "input_size": 32, "random_resized_crop": True, "rand_augment": "rand-m7-n4-mstd0.5-inc1",
            "random_erasing": 0.25}


def test_one_decoded_video_gives_num_sample_different_clips_in_one_batch(tmp_path, monkeypatch):
    from uniformer.data import video_io

    ds = build_dataset({**_videos(tmp_path), "num_sample": 3}, "train")
    decoded = []
    original = video_io.VideoReader.get_frames

    def counting(self, indices):
        decoded.append(list(indices))
        return original(self, indices)

    monkeypatch.setattr(video_io.VideoReader, "get_frames", counting)
    torch.manual_seed(0)
    items = [ds[0], ds[1]]
    assert len(decoded) == 2  # one decode per video, not per clip
    assert items[0]["input"].shape == (3, 3, 4, 32, 32) and items[0]["num_sample"] == 3
    clips = items[0]["input"]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.equal(clips[a], clips[b])  # independently augmented
    batch = collate(items)
    assert batch["input"].shape == (6, 3, 4, 32, 32)
    assert torch.equal(batch["input"][:3], clips)  # an item's clips stay adjacent
    assert batch["label"].tolist() == [0, 0, 0, 1, 1, 1] and batch["index"].tolist() == [0, 0, 0, 1, 1, 1]
    val = build_dataset({**_videos(tmp_path), "num_sample": 3, "val_list": "train.txt"}, "val")
    assert ds.samples_per_item == 3 and val.samples_per_item == 1 and val[0]["input"].shape == (3, 4, 32, 32)


def test_the_clips_of_one_video_share_its_frames(tmp_path):
    # flat grey frames whose level encodes the frame index: any crop keeps the level, so every clip of an item
    # shows the same frames (decoded once, sampled once), while the crops differ
    cfg = {**_videos(tmp_path), "num_sample": 2, "rand_augment": None, "random_erasing": 0.0}
    ds = build_dataset(cfg, "train")
    torch.manual_seed(1)
    x = ds[2]["input"]  # (2, C, T, H, W), normalised
    levels = x.mean(dim=(1, 3, 4))  # (2, T)
    assert torch.allclose(levels[0], levels[1], atol=1e-4)
    assert levels[0].unique().numel() == 4


def test_batch_size_counts_clips_and_must_hold_whole_items(tmp_path):
    ds = build_dataset({**_videos(tmp_path), "num_sample": 2}, "train")
    assert items_per_batch(ds, 4) == 2
    with pytest.raises(ValueError, match=r"train.batch_size = 5 .*data.num_sample"):
        items_per_batch(ds, 5)
    loader = train_loader(ds, collate, TRAIN_CFG, seed=0, epoch=0, rank=0, world_size=1,
                          device=torch.device("cpu"))
    batches = list(loader)
    # 4 videos x 2 clips / 4 clips per batch = 2 steps, each 4 clips of 2 videos
    assert len(batches) == 2 and all(b["input"].shape[0] == 4 for b in batches)
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_resuming_in_the_middle_of_an_epoch_draws_the_same_clips(tmp_path):
    ds = build_dataset({**_videos(tmp_path, 6), "num_sample": 2}, "train")
    kw = dict(seed=5, epoch=1, rank=0, world_size=1, device=torch.device("cpu"))
    full = list(train_loader(ds, collate, TRAIN_CFG, **kw))
    resumed = list(train_loader(ds, collate, TRAIN_CFG, start_batch=1, **kw))
    assert len(full) == 3 and len(resumed) == 2
    for a, b in zip(full[1:], resumed):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["input"], b["input"])


def test_two_processes_share_one_global_batch(tmp_path):
    # the place in the epoch seeds a sample's augmentation: the two processes' batches of a step are, together,
    # the one-process batch of twice the size, clip for clip
    ds = build_dataset({**_videos(tmp_path, 8), "num_sample": 2}, "train")
    kw = dict(seed=2, epoch=0, device=torch.device("cpu"))
    one = list(train_loader(ds, collate, {**TRAIN_CFG, "batch_size": 8}, rank=0, world_size=1, **kw))
    per_rank = [list(train_loader(ds, collate, TRAIN_CFG, rank=r, world_size=2, **kw)) for r in (0, 1)]
    assert len(one) == len(per_rank[0]) == len(per_rank[1]) == 2
    for step, batch in enumerate(one):
        rows = {int(i): [] for i in batch["index"].unique()}
        for r in (0, 1):
            shard = per_rank[r][step]
            assert not set(shard["index"].tolist()) & set(per_rank[1 - r][step]["index"].tolist())
            for i, x in zip(shard["index"].tolist(), shard["input"]):
                rows[i].append(x)
        for i, x in zip(batch["index"].tolist(), batch["input"]):
            assert any(torch.equal(x, y) for y in rows[i])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rasampler_repeats_each_sample_on_different_processes(world):
    n, repeats = 12, 3
    shards = [EpochSampler(n, seed=7, epoch=0, rank=r, world_size=world, repeats=repeats) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and sum(len(s) for s in shards) == n // world * world
    drawn = [i for s in shards for i in s.indices]
    counts = {i: drawn.count(i) for i in set(drawn)}
    assert set(counts.values()) == {repeats} and len(counts) == n // repeats  # an epoch: n/3 samples, 3 times each
    if world == 3:  # DeiT: the copies of a sample land on different processes
        assert all(len({r for r, s in enumerate(shards) if i in s.indices}) == 3 for i in counts)
    seeds = [seed for s in shards for seed in s.seeds]
    assert len(set(seeds)) == len(seeds)  # every copy augmented with its own seed
    again = EpochSampler(n, seed=7, epoch=0, rank=0, world_size=world, repeats=repeats)
    other_seed = EpochSampler(n, seed=8, epoch=0, rank=0, world_size=world, repeats=repeats)
    other_epoch = EpochSampler(n, seed=7, epoch=1, rank=0, world_size=world, repeats=repeats)
    assert again.indices == shards[0].indices
    assert other_seed.indices != shards[0].indices and other_epoch.indices != shards[0].indices
    # resuming at position k is the tail of the same order
    assert EpochSampler(n, 7, 0, 0, world, start=2, repeats=repeats).indices == shards[0].indices[2:]


def test_image_dataset_repeated_aug_reaches_the_loader(tmp_path):
    from PIL import Image

    lines = []
    for i in range(6):
        Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png {i % 2}")
    write_list(tmp_path / "train.txt", lines)
    cfg = {"format": "image_list", "root": str(tmp_path), "train_list": "train.txt", "input_size": 16,
           "repeated_aug": 3}
    ds = build_dataset(cfg, "train")
    assert ds.epoch_repeats == 3 and ds.samples_per_item == 1
    batches = list(train_loader(ds, collate, {**TRAIN_CFG, "batch_size": 3}, seed=0, epoch=0, rank=0,
                                world_size=1, device=torch.device("cpu")))
    drawn = torch.cat([b["index"] for b in batches]).tolist()
    assert len(drawn) == 6 and sorted({drawn.count(i) for i in set(drawn)}) == [3]


def test_video_random_resized_crop_uses_one_box_for_every_frame():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, size=(40, 56, 3), dtype=np.uint8)
    frames = np.stack([base + 10 * t for t in range(4)]).astype(np.uint8)  # frame t = frame 0 + 10 t
    cfg = parse_data_config({"format": "video_list", "input_size": 24, "random_resized_crop": True, "hflip": True,
                             "mean": [0, 0, 0], "std": [1 / 255] * 3})
    transform = ClipTransform(cfg, "train")
    for seed in range(5):
        x = transform(frames, np.random.default_rng(seed))  # (C, T, H, W) in 0..255
        diff = x[:, 1:] - x[:, :1]
        expected = 10 * torch.arange(1, 4, dtype=torch.float32).view(1, 3, 1, 1)
        assert torch.allclose(diff, expected.expand_as(diff), atol=1e-3)  # the same box and flip in every frame
    boxes = {tuple(transform(frames, np.random.default_rng(s))[0, 0, 0, :3].tolist()) for s in range(5)}
    assert len(boxes) > 1  # and the box changes between clips


def test_bgr_channel_order_in_training():
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    frames[..., 0] = 200  # red
    common = {"format": "video_list", "input_size": 16, "scale_jitter": [16, 16], "hflip": False,
              "mean": [0, 0, 0], "std": [1 / 255] * 3}
    rgb = ClipTransform(parse_data_config(common), "train")(frames, np.random.default_rng(0))
    bgr = ClipTransform(parse_data_config({**common, "channel_order": "BGR"}), "train")(frames,
                                                                                         np.random.default_rng(0))
    assert rgb[0].mean() == pytest.approx(200) and bgr[2].mean() == pytest.approx(200) and bgr[0].abs().max() == 0


def test_pipeline_benchmark_compares_num_sample_with_one(tmp_path):
    from uniformer.data.benchmark import benchmark_num_sample, benchmark_pipeline

    cfg = {**_videos(tmp_path), "num_sample": 2, "rand_augment": None}
    one = benchmark_pipeline(cfg, num_workers=0, batches=1, batch_size=4, warmup_batches=0)
    assert one["timed_clips"] == 4 and one["num_sample"] == 2  # a batch of 4 clips: 2 videos x 2
    result = benchmark_num_sample(cfg, num_workers=0, batches=1, batch_size=4, rounds=2)
    assert result["num_sample"] == 2 and result["ratio"] == pytest.approx(
        result["clips_per_s"] / result["clips_per_s_num_sample_1"])
    assert sorted(r["num_sample"] for r in result["rounds"]) == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="num_sample must be >= 2"):
        benchmark_num_sample({**cfg, "num_sample": 1})


def test_frame_folders_give_num_sample_clips_of_the_frames_read_once(tmp_path, monkeypatch):
    from PIL import Image

    from uniformer.data import datasets

    folder = tmp_path / "vid1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for j in range(12):
        Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(folder / f"{j + 1:05d}.png")
    write_list(tmp_path / "train.txt", ["vid1 12 1"])
    reads = []
    original = datasets.read_frame
    monkeypatch.setattr(datasets, "read_frame", lambda path: reads.append(path) or original(path))
    cfg = {"format": "frame_folder", "root": str(tmp_path), "train_list": "train.txt", "frame_template": "{:05d}.png",
           "num_frames": 4, "input_size": 16, "num_classes": 2, "num_sample": 2, "random_resized_crop": True}
    torch.manual_seed(0)
    item = build_dataset(cfg, "train")[0]
    assert item["input"].shape == (2, 3, 4, 16, 16) and item["num_sample"] == 2
    assert len(reads) == 4 and not torch.equal(item["input"][0], item["input"][1])


@pytest.mark.parametrize("policy", ["v0", "rand-m9-mstd0.5-inc1"])
def test_image_training_path_crops_then_augments_bicubic(policy):
    # DeiT: random-resized crop (bicubic), flip, then AutoAugment v0 (the light XXS runs) or RandAugment
    cfg = parse_data_config({"format": "image_list", "input_size": 24, "rand_augment": policy})
    assert cfg.interpolation == "bicubic" and cfg.random_resized_crop
    transform = ClipTransform(cfg, "train")
    image = np.random.default_rng(0).integers(0, 255, (1, 40, 50, 3), dtype=np.uint8)
    outs = [transform(image, np.random.default_rng(s)) for s in range(3)]
    assert all(o.shape == (3, 1, 24, 24) and torch.isfinite(o).all() for o in outs)
    assert not torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="rand_augment"):
        parse_data_config({"format": "image_list", "rand_augment": "v9"})
