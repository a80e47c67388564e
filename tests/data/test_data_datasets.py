"""Dataset formats, missing-file reporting, corrupt-sample replacement, views, collate and determinism."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from _data_helpers import write_indexed_video, write_list
from PIL import Image

from uniformer.data import build_dataset, collate
from uniformer.data.transforms import crop_positions

VIDEO_CFG = {
    "format": "video_list",
    "num_frames": 4,
    "stride": 2,
    "input_size": 32,
    "scale_jitter": [40, 48],
    "test_clips": 2,
    "test_crops": 3,
}


def video_cfg(root, **kwargs):
    return {**VIDEO_CFG, "root": str(root), **kwargs}


@pytest.fixture()
def kinetics(tmp_path, video_dir):
    """A Kinetics-style root with 4 videos, a train/val list and class names."""
    for name in "abcd":
        shutil.copy(video_dir / f"{name}.mp4", tmp_path / f"{name}.mp4")
    write_list(tmp_path / "train.txt", ["a.mp4 0", "b.mp4 1", "c.mp4 2", "d.mp4 1"])
    write_list(tmp_path / "val.txt", ["# comment", "", "c.mp4 2", "d.mp4 0"])
    write_list(tmp_path / "classnames.txt", ["cat", "dog", "fish"])
    return tmp_path


# ---------------------------------------------------------------------- formats
def test_video_list_train_val_test_shapes(kinetics):
    cfg = video_cfg(kinetics, train_list="train.txt", val_list="val.txt", class_names="classnames.txt")
    train = build_dataset(cfg, "train")
    assert len(train) == 4 and train.classes == ["cat", "dog", "fish"] and train.num_classes == 3
    item = train[1]
    assert set(item) == {"input", "label", "index", "failures"}
    assert item["input"].shape == (3, 4, 32, 32) and item["input"].dtype == torch.float32
    assert item["label"] == 1 and item["index"] == 1 and item["failures"] == []
    val = build_dataset(cfg, "val")
    assert len(val) == 2 and val[0]["input"].shape == (3, 4, 32, 32) and val[1]["label"] == 0
    test = build_dataset(cfg, "test")  # test_list falls back to val_list
    assert test.num_views == 6
    assert test[0]["input"].shape == (6, 3, 4, 32, 32)


def test_list_labels_as_class_names_and_inferred_classes(kinetics):
    write_list(kinetics / "named.txt", ["a.mp4 dog", "b.mp4 cat", "c mp4 dir/../c.mp4 cat"])
    (kinetics / "c mp4 dir").mkdir()
    ds = build_dataset(video_cfg(kinetics, train_list="named.txt", class_names="classnames.txt"), "train")
    assert [s[1] for s in ds.samples] == [1, 0, 0]
    # without a class-names file: sorted names seen in the lists
    ds = build_dataset(video_cfg(kinetics, train_list="named.txt"), "train")
    assert ds.classes == ["cat", "dog"]
    # integer labels without names: classes 0..max over all configured lists, every one of them seen
    write_list(kinetics / "ints.txt", ["a.mp4 0", "b.mp4 1", "c.mp4 3"])
    write_list(kinetics / "ints_val.txt", ["b.mp4 2", "a.mp4 4"])
    ds = build_dataset(video_cfg(kinetics, train_list="ints.txt", val_list="ints_val.txt"), "train")
    assert ds.num_classes == 5
    # a stray label (99 in a 5-class list) is an error naming the file and line, not a 100-class model
    write_list(kinetics / "ints_val.txt", ["b.mp4 2", "a.mp4 4", "c.mp4 99"])
    with pytest.raises(ValueError, match=r"class 5 never appears.*\n.*ints_val.txt: line 3: label 99"):
        build_dataset(video_cfg(kinetics, train_list="ints.txt", val_list="ints_val.txt"), "train")
    # with the class count given, a label outside it names the line too
    with pytest.raises(ValueError, match=r"ints_val.txt: 1 invalid label\(s\):\n  line 3: label 99 outside \[0, 5\)"):
        build_dataset(video_cfg(kinetics, train_list="ints.txt", val_list="ints_val.txt", num_classes=5), "val")


def test_csv_list(kinetics):
    (kinetics / "train.csv").write_text("path,label\na.mp4,2\n\nb.mp4,0\n", encoding="utf-8")
    ds = build_dataset(video_cfg(kinetics, train_list="train.csv", class_names="classnames.txt"), "train")
    assert [(s[0].rsplit("/", 1)[-1], s[1]) for s in ds.samples] == [("a.mp4", 2), ("b.mp4", 0)]
    assert ds[0]["input"].shape == (3, 4, 32, 32)
    (kinetics / "bad.csv").write_text("file,label\na.mp4,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.csv.*path"):
        build_dataset(video_cfg(kinetics, train_list="bad.csv"), "train")


def test_bad_labels_are_reported_with_line_numbers(kinetics):
    write_list(kinetics / "bad.txt", ["a.mp4 0", "b.mp4 7", "c.mp4 horse"])
    with pytest.raises(ValueError) as err:
        build_dataset(video_cfg(kinetics, train_list="bad.txt", class_names="classnames.txt"), "train")
    msg = str(err.value)
    assert "bad.txt" in msg and "2 invalid" in msg and "line 2" in msg and "line 3" in msg and "horse" in msg


def test_sthv2_json(tmp_path, video_dir):
    labels = {
        "Pushing something from left to right": "0",
        "Putting something on something": "1",
        "Holding something next to something": "2",
    }
    (tmp_path / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    ann = [
        {"id": "11", "label": "putting a cup on a table", "template": "Putting [something] on [something]",
         "placeholders": ["a cup", "a table"]},
        {"id": "12", "label": "pushing pen", "template": "Pushing [something] from left to right"},
        {"id": "13", "label": "holding", "template": "Holding [something]  next to [something]"},
    ]
    (tmp_path / "train.json").write_text(json.dumps(ann), encoding="utf-8")
    (tmp_path / "val.json").write_text(json.dumps(ann[:1]), encoding="utf-8")
    videos = tmp_path / "videos"
    videos.mkdir()
    for vid in ("11", "12", "13"):
        write_indexed_video(videos / f"{vid}.webm", 12, codec="libvpx")
    cfg = {
        "format": "sthv2", "root": str(videos), "labels_file": str(tmp_path / "labels.json"),
        "train_annotations": str(tmp_path / "train.json"), "val_annotations": str(tmp_path / "val.json"),
        "num_frames": 4, "input_size": 32, "test_crops": 3,
    }
    train = build_dataset(cfg, "train")
    assert train.classes[1] == "Putting something on something"
    assert [s[1] for s in train.samples] == [1, 0, 2]
    assert train.samples[0][0].endswith("videos/11.webm")
    assert train.cfg.sampling == "uniform" and train.cfg.hflip is False  # SSv2 defaults
    assert train[0]["input"].shape == (3, 4, 32, 32)
    test = build_dataset(cfg, "test")
    assert len(test) == 1 and test[0]["input"].shape == (3, 3, 4, 32, 32)
    # other extension through video_ext
    shutil.copy(video_dir / "a.mp4", videos / "11.mp4")
    ds = build_dataset({**cfg, "video_ext": "mp4", "train_annotations": str(tmp_path / "val.json")}, "train")
    assert ds.samples[0][0].endswith("11.mp4")
    # a template absent from the labels file is reported with its entry
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "1", "template": "Dancing [something]"}]), "utf-8")
    with pytest.raises(ValueError, match=r"(?s)bad.json.*entry 0 \(id 1\).*Dancing something"):
        build_dataset({**cfg, "train_annotations": str(tmp_path / "bad.json")}, "train")


def _save_image(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder(tmp_path):
    for split in ("train", "val"):
        _save_image(tmp_path / split / "zebra" / "1.png", (255, 255, 255))
        _save_image(tmp_path / split / "ant" / "1.jpg", (0, 0, 0))
    _save_image(tmp_path / "train" / "ant" / "2.JPEG", (10, 10, 10))
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    cfg = {"format": "image_folder", "root": str(tmp_path), "input_size": 24, "test_crops": 3}
    train = build_dataset(cfg, "train")
    assert train.classes == ["ant", "zebra"] and len(train) == 3
    assert train[0]["input"].shape == (3, 24, 24) and train[2]["label"] == 1
    val = build_dataset(cfg, "val")
    assert val[0]["input"].shape == (3, 24, 24)
    test = build_dataset(cfg, "test")
    assert test.num_views == 3 and test[1]["input"].shape == (3, 3, 24, 24)
    # white image normalised with ImageNet stats
    white = val[1]["input"]
    assert torch.allclose(white[0], torch.full((24, 24), (1 - 0.485) / 0.229), atol=1e-4)


def test_image_list(tmp_path):
    _save_image(tmp_path / "imgs" / "x.png", (200, 0, 0))
    _save_image(tmp_path / "imgs" / "y.png", (0, 200, 0))
    write_list(tmp_path / "list.txt", ["imgs/x.png 1", "imgs/y.png 0"])
    cfg = {"format": "image_list", "root": str(tmp_path), "train_list": "list.txt", "val_list": "list.txt",
           "input_size": 16}
    train = build_dataset(cfg, "train")
    assert train.num_classes == 2 and train[0]["label"] == 1 and train[0]["input"].shape == (3, 16, 16)
    test = build_dataset(cfg, "test")
    assert test[0]["input"].shape == (1, 3, 16, 16)  # the test split always has the view axis


# ---------------------------------------------------------------------- missing files
def test_missing_files_all_reported_with_count(kinetics):
    write_list(kinetics / "holes.txt", ["a.mp4 0", "gone1.mp4 1", "b.mp4 1", "gone2.mp4 2", "sub/gone3.mp4 0"])
    cfg = video_cfg(kinetics, train_list="holes.txt")
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(cfg, "train")
    msg = str(err.value)
    assert "holes.txt" in msg and "3 of 5" in msg
    for where, name in (("line 2", "gone1.mp4"), ("line 4", "gone2.mp4"), ("line 5", "gone3.mp4")):
        assert f"{where}: " in msg and name in msg
    assert "skip_missing" in msg
    with pytest.warns(UserWarning, match=r"holes.txt: skipping 3 of 5"):
        ds = build_dataset({**cfg, "skip_missing": True}, "train")
    assert len(ds) == 2 and ds.num_skipped_missing == 3
    assert [s[0].rsplit("/", 1)[-1] for s in ds.samples] == ["a.mp4", "b.mp4"]


def test_missing_list_file_names_key(kinetics):
    with pytest.raises(FileNotFoundError, match="val_list"):
        build_dataset(video_cfg(kinetics, train_list="train.txt", val_list="nope.txt"), "val")
    with pytest.raises(ValueError, match="'train_list' is required"):
        build_dataset(video_cfg(kinetics), "train")


# ---------------------------------------------------------------------- corrupt samples
@pytest.fixture()
def with_corrupt(kinetics):
    (kinetics / "garbage.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 4000, np.uint8).tobytes())
    data = (kinetics / "a.mp4").read_bytes()
    (kinetics / "truncated.mp4").write_bytes(data[: len(data) // 3])
    write_indexed_video(kinetics / "short.mp4", 2)
    write_list(kinetics / "mixed.txt", ["garbage.mp4 0", "truncated.mp4 1", "b.mp4 1", "c.mp4 2", "short.mp4 0"])
    return kinetics


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_corrupt_videos_are_replaced_and_named(with_corrupt, split):
    cfg = video_cfg(with_corrupt, train_list="mixed.txt", val_list="mixed.txt", min_video_frames=4)
    ds = build_dataset(cfg, split)
    good = {2, 3}
    for bad_index, bad_name in ((0, "garbage.mp4"), (1, "truncated.mp4"), (4, "short.mp4")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            item = ds[bad_index]
        assert item["index"] in good  # the sample actually returned, with its own label
        assert item["label"] == ds.samples[item["index"]][1]
        assert item["failures"] and item["failures"][0].endswith(bad_name)
        x = item["input"]
        assert torch.isfinite(x).all() and x.abs().sum() > 0 and x.std() > 0  # real content, not zeros
        # replacement is deterministic given the seed and index
        again = ds[bad_index]
        assert again["index"] == item["index"] and again["failures"] == item["failures"]
        if split != "train":
            assert torch.equal(again["input"], item["input"])
    batch = collate([ds[0], ds[2], ds[1]])
    assert len(batch["failures"]) >= 2
    assert any(f.endswith("garbage.mp4") for f in batch["failures"])
    assert any(f.endswith("truncated.mp4") for f in batch["failures"])


def test_replacement_depends_on_seed(with_corrupt):
    base = video_cfg(with_corrupt, train_list="mixed.txt", min_video_frames=4)
    picks = {build_dataset({**base, "seed": s}, "train").replacement_index(0, 0) for s in range(20)}
    assert picks <= {1, 2, 3, 4} and len(picks) > 1


def test_too_many_failures_raise_clear_error(with_corrupt):
    write_list(with_corrupt / "allbad.txt", ["garbage.mp4 0", "truncated.mp4 1"])
    ds = build_dataset(video_cfg(with_corrupt, train_list="allbad.txt", max_retries=3), "train")
    with pytest.raises(RuntimeError, match=r"4 consecutive samples failed.*allbad.txt|allbad.txt.*4 consecutive"):
        ds[0]


def test_failures_travel_through_worker_processes(with_corrupt):
    ds = build_dataset(video_cfg(with_corrupt, train_list="mixed.txt", min_video_frames=4), "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["input"].shape == (5, 3, 4, 32, 32)
    names = sorted(f.rsplit("/", 1)[-1] for f in batch["failures"])
    assert {"garbage.mp4", "truncated.mp4", "short.mp4"} <= set(names)
    assert batch["label"].dtype == torch.long and batch["index"].tolist()[2:4] == [2, 3]


# ---------------------------------------------------------------------- randomness, views, crops
def test_train_random_test_deterministic(kinetics):
    cfg = video_cfg(kinetics, train_list="train.txt", val_list="val.txt", num_frames=2, stride=1,
                    scale_jitter=[32, 64], hflip=True)
    train = build_dataset(cfg, "train")
    draws = [train[0]["input"] for _ in range(6)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    torch.manual_seed(123)
    a = train[0]["input"]
    torch.manual_seed(123)
    assert torch.equal(a, train[0]["input"])  # reproducible under torch.manual_seed
    for split in ("val", "test"):
        ds = build_dataset(cfg, split)
        assert torch.equal(ds[0]["input"], ds[0]["input"])


def test_test_views_cover_clips_and_crops(tmp_path):
    """Views are clip-major; crops are left/centre/right of the short-side-resized frame."""
    frames_path = tmp_path / "wide.mp4"
    from _data_helpers import indexed_frames

    from uniformer.data.video_io import write_video

    frames = indexed_frames(16, height=32, width=96)
    frames[:, :, :32, :] = 0  # left third black, right third white, centre keeps the frame's grey level
    frames[:, :, 64:, :] = 255
    write_video(frames_path, frames, 25, gop=4)
    write_list(tmp_path / "list.txt", ["wide.mp4 0"])
    cfg = {"format": "video_list", "root": str(tmp_path), "val_list": "list.txt", "num_frames": 2, "stride": 1,
           "input_size": 32, "test_clips": 2, "test_crops": 3, "mean": [0, 0, 0], "std": [1, 1, 1]}
    x = build_dataset(cfg, "test")[0]["input"]
    assert x.shape == (6, 3, 2, 32, 32)
    means = x.mean(dim=(1, 3, 4))  # (views, frames)
    assert torch.all(means[[0, 3]] < 0.05) and torch.all(means[[2, 5]] > 0.95)  # left black, right white
    # centre crops: span stride * num_frames = 2, delta 14; clip k of 2 starts at k * floor(14 / 1)
    grey = lambda i: (8 + 14 * i) / 255  # noqa: E731
    assert torch.allclose(means[1], torch.tensor([grey(0), grey(1)]), atol=0.03)
    assert torch.allclose(means[4], torch.tensor([grey(14), grey(15)]), atol=0.03)


def test_crop_positions_portrait_and_landscape():
    assert crop_positions(32, 96, 32, 3) == [(0, 0), (0, 32), (0, 64)]
    assert crop_positions(100, 40, 40, 3) == [(0, 0), (30, 0), (60, 0)]
    assert crop_positions(50, 50, 40, 1) == [(5, 5)]


def test_collate_stacks_and_checks_shapes():
    items = [{"input": torch.ones(3, 2, 4, 4) * i, "label": i, "index": 10 + i, "failures": [f"f{i}"] * i}
             for i in range(3)]
    batch = collate(items)
    assert batch["input"].shape == (3, 3, 2, 4, 4) and torch.equal(batch["input"][2], items[2]["input"])
    assert batch["label"].tolist() == [0, 1, 2] and batch["index"].tolist() == [10, 11, 12]
    assert batch["failures"] == ["f1", "f2", "f2"]
    items[1]["input"] = torch.ones(3, 2, 4, 5)
    with pytest.raises(ValueError, match="different shapes"):
        collate(items)


# ---------------------------------------------------------------------- frame folders (the original's SSv1/SSv2)
def _frame_folder(root, name: str, count: int, size=(24, 40)) -> np.ndarray:
    """Folder ``name`` of ``count`` PNG frames ``{:05d}.png`` whose grey level is 4 * frame number."""
    folder = root / name
    folder.mkdir()
    frames = np.zeros((count, *size, 3), np.uint8)
    for j in range(count):
        frames[j] = 4 * (j + 1)
        Image.fromarray(frames[j]).save(folder / f"{j + 1:05d}.png")
    return frames


def test_frame_folder_reads_the_listed_images_with_the_original_sampling(tmp_path):
    _frame_folder(tmp_path, "vid1", 17)
    write_list(tmp_path / "val.txt", ["vid1 17 2"])
    cfg = {"format": "frame_folder", "root": str(tmp_path), "val_list": "val.txt", "frame_template": "{:05d}.png",
           "num_frames": 4, "input_size": 24, "num_classes": 3, "mean": [0, 0, 0], "std": [1, 1, 1]}
    ds = build_dataset(cfg, "val")
    assert ds.cfg.sampling == "uniform" and ds.cfg.channel_order == "BGR" and not ds.cfg.hflip
    item = ds[0]
    assert item["label"] == 2 and item["input"].shape == (3, 4, 24, 24)
    # seg = 16 / 4 = 4: images round(4 i) + int(4 / 2) + 1 = 3, 7, 11, 15 (1-based), grey 4 * image number
    np.testing.assert_allclose(item["input"][0, :, 0, 0].numpy(), [12 / 255, 28 / 255, 44 / 255, 60 / 255],
                               atol=1e-6)


def test_frame_folder_errors_name_the_line_and_folder(tmp_path):
    _frame_folder(tmp_path, "vid1", 3)
    write_list(tmp_path / "bad.txt", ["vid1 three 0"])
    cfg = {"format": "frame_folder", "root": str(tmp_path), "val_list": "bad.txt", "num_classes": 2}
    with pytest.raises(ValueError, match=r"bad.txt:1: expected 'folder num_frames label'"):
        build_dataset(cfg, "val")
    write_list(tmp_path / "missing.txt", ["vid1 3 0", "gone 5 1"])
    with pytest.raises(FileNotFoundError, match=r"missing.txt:2: .*gone"):
        build_dataset({**cfg, "val_list": "missing.txt"}, "val")
    write_list(tmp_path / "short.txt", ["vid1 5 0"])  # lists more frames than the folder holds
    ds = build_dataset({**cfg, "val_list": "short.txt", "frame_template": "{:05d}.png", "num_frames": 4,
                        "input_size": 8, "max_retries": 0}, "val")
    from uniformer.data import SampleLoadError

    with pytest.raises(SampleLoadError, match=r"vid1/00004.png: frame image not found"):
        ds.load(ds.samples[0][0], None)  # images 1..4 of the 5 listed; the folder has 3
    with pytest.raises(ValueError, match="'frame_template'"):
        build_dataset({**cfg, "frame_template": "frame.jpg"}, "val")
    with pytest.raises(ValueError, match="'frame_template'"):
        build_dataset({"format": "video_list", "frame_template": "{:05d}.jpg"}, "val")
    with pytest.raises(ValueError, match="'target_fps'"):
        build_dataset({**cfg, "target_fps": 30}, "val")


def test_target_fps_numbers_a_video_as_ffmpeg_r30(tmp_path, video_dir):
    """sthv2 (target_fps 30 by default) samples the 30 fps image numbers and maps them to decoded frames."""
    shutil.copy(video_dir / "a.mp4", tmp_path / "a.mp4")
    write_list(tmp_path / "val.txt", ["a.mp4 0"])
    base = {"format": "video_list", "root": str(tmp_path), "val_list": "val.txt", "sampling": "uniform",
            "num_frames": 4, "input_size": 32}
    native = build_dataset(base, "val")
    resampled = build_dataset({**base, "target_fps": 30}, "val")
    from uniformer.data.sampling import resampled_frame_map, uniform_test_indices

    n, fps = 50, 25.0
    shown = resampled_frame_map(n, fps)
    assert resampled.frame_indices(n, fps, None).tolist() == shown[uniform_test_indices(60, 4, num_clips=1)].tolist()
    assert native.frame_indices(n, fps, None).tolist() == uniform_test_indices(50, 4, num_clips=1).tolist()
    assert native.frame_indices(n, fps, None).tolist() != resampled.frame_indices(n, fps, None).tolist()
