"""Semantic segmentation: training on generated shapes, mIoU, inference modes, datasets, original checkpoints."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dense_helpers import (
    TINY_BACKBONE,
    build,
    evaluate,
    losses_fell,
    predict,
    recipe,
    save_original_checkpoint,
    seeded,
    train,
    write_garbage_image,
)
from PIL import Image

from uniformer.engine.config import ConfigError
from uniformer.models.checkpoint import CheckpointError
from uniformer.tasks import CONFIGS
from uniformer.tasks.dense.synthetic import write_shapes_segmentation
from uniformer.tasks.segmentation.data import SegDataset, rescale_size, resize_keep_ratio, scaled_size, seg_collate
from uniformer.tasks.segmentation.evaluation import SegMetric, infer_probs


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_segmentation(tmp_path_factory.mktemp("seg") / "shapes", n_train=8, n_val=3, size=(64, 64))


def tiny_cfg(root: Path, head: str = "fpn", **over) -> dict:
    cfg = {
        "model": {"backbone": dict(TINY_BACKBONE), "head": head, "channels": 16, "neck_channels": 16,
                  "aux_head": head == "upernet", "aux_channels": 16, "dropout": 0.0},
        "data": {"format": "folder", "root": str(root), "classes": "classes.txt", "num_classes": None,
                 "train": {"images": "images/train", "masks": "masks/train"},
                 "val": {"images": "images/val", "masks": "masks/val"},
                 "img_scale": [64, 64], "ratio_range": [0.75, 1.25], "crop_size": [64, 64]},
        "train": {"iters": 12, "batch_size": 4, "num_workers": 0, "log_every": 1},
        "checkpoint": {"every": 6},
        "optim": {"lr": 2e-3},
        "sched": {"name": "constant", "warmup_iters": 0},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return recipe("segmentation", cfg)


def test_train_loss_falls_evaluates_and_resumes(shapes, tmp_path):
    seeded()
    cfg = tiny_cfg(shapes)
    summary = train("segmentation", cfg, tmp_path, show_progress=False)
    first, last = losses_fell(summary["history"])
    assert last < first * 0.85, summary["history"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= m["val_mIoU"] <= 1.0 and 0.0 <= m["val_aAcc"] <= 1.0
    assert set(m["val_per_class"]) == {"background", "circle", "square", "triangle"}
    assert m["val_num_images"] == 3 and m["val_skipped"] == []
    for name in ("train.log", "metrics.csv", "curves.png", "last.pt", "best.pt", "checkpoint_iter0000006.pt"):
        assert (tmp_path / name).is_file(), name
    # the final checkpoint evaluates to the same numbers through the public entry point
    again = evaluate(tmp_path / "last.pt", cfg)
    assert again["mIoU"] == pytest.approx(m["val_mIoU"], abs=1e-9)
    # resume from last.pt runs only the missing iterations
    cfg["train"]["iters"] = 14
    resumed = train("segmentation", cfg, tmp_path, resume="auto", show_progress=False)
    assert resumed["steps"] == 14 and len(resumed["history"]) == 14
    assert resumed["history"][:12] == summary["history"]


def test_metric_exact_values():
    metric = SegMetric(3, ignore_index=255, class_names=["a", "b", "c"])
    label = np.array([[0, 0, 1, 1], [0, 255, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 1, 0]])
    metric.update(pred, label)
    out = metric.compute()
    # class a: intersect 2, union 4 (pred 3 incl. one on b, label 3); class b: intersect 3, union 5; c: never labelled
    assert out["per_class"]["a"]["IoU"] == pytest.approx(2 / 4)
    assert out["per_class"]["b"]["IoU"] == pytest.approx(3 / 5)
    assert math.isnan(out["per_class"]["c"]["IoU"])  # predicted on an ignored pixel only: absent, not 0
    assert out["mIoU"] == pytest.approx((2 / 4 + 3 / 5) / 2)
    assert out["aAcc"] == pytest.approx(5 / 7)
    assert out["mAcc"] == pytest.approx((2 / 3 + 3 / 4) / 2)


def test_metric_absent_class_is_nan_and_skipped():
    metric = SegMetric(3)
    metric.update(np.array([0, 1, 1]), np.array([0, 1, 255]))
    out = metric.compute()
    assert math.isnan(out["per_class"]["2"]["IoU"])
    assert out["mIoU"] == pytest.approx(1.0)


def test_upernet_aux_losses_and_inference_modes(shapes):
    seeded()
    cfg = tiny_cfg(shapes, head="upernet")
    model = build("segmentation", cfg)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    losses = model.losses(x, y)
    assert set(losses) == {"loss_seg", "loss_aux"} and all(torch.isfinite(v) for v in losses.values())
    image = np.asarray(Image.open(next((shapes / "images" / "val").iterdir())))
    model.eval()
    whole = infer_probs(model, image, cfg["data"], {"mode": "whole"}, 4)
    assert whole.shape == (4, 64, 64) and torch.allclose(whole.sum(0), torch.ones(64, 64), atol=1e-5)
    # a sliding window as large as the image is the whole-image prediction
    slide = infer_probs(model, image, cfg["data"], {"mode": "slide", "crop_size": [64, 64], "stride": [32, 32]}, 4)
    assert torch.allclose(slide, whole, atol=1e-5)
    small = infer_probs(model, image, cfg["data"], {"mode": "slide", "crop_size": [32, 32], "stride": [24, 24]}, 4)
    assert small.shape == (4, 64, 64) and not torch.allclose(small, whole, atol=1e-3)
    ms = infer_probs(model, image, cfg["data"], {"mode": "whole", "scales": [0.75, 1.0, 1.25], "flip": True}, 4)
    assert ms.shape == (4, 64, 64) and torch.allclose(ms.sum(0), torch.ones(64, 64), atol=1e-5)


def test_test_resize_follows_mmcv_and_align_resize():
    # mmcv's keep-ratio sizes (rounded half up), integer multi-scale sizes, AlignResize's second resize
    assert rescale_size(150, 200, (2048, 512)) == (512, 683)
    assert rescale_size(560, 760, (2048, 512)) == (512, 695)
    assert scaled_size((2048, 512), 0.75) == (1536, 384) and scaled_size((2048, 512), 1.1) == (2252, 563)
    image = np.zeros((150, 200, 3), np.uint8)
    assert resize_keep_ratio(image, (2048, 512)).shape == (512, 683, 3)
    assert resize_keep_ratio(image, (2048, 512), size_divisor=32).shape == (512, 704, 3)
    # OpenCV's bilinear on uint8: halving averages 2x2 blocks (rounded half up), with no extra smoothing;
    # label maps take the nearest label
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (8, 12))
    out, lab = resize_keep_ratio(img, (6, 4), labels)
    blocks = img.reshape(4, 2, 6, 2, 3).astype(np.float64).mean((1, 3))
    assert np.array_equal(out, np.floor(blocks + 0.5).astype(np.uint8))
    assert np.array_equal(lab, labels[::2, ::2]) and lab.dtype == np.int64


def test_ade20k_layout_shifts_labels(tmp_path):
    for sub in ("images/training", "annotations/training"):
        (tmp_path / sub).mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "images/training/a.jpg")
    Image.fromarray(np.array([[0, 1, 2, 150]] * 8, np.uint8).repeat(2, 1)).save(tmp_path / "annotations/training/a.png")
    cfg = recipe("segmentation", {"data": {"root": str(tmp_path)}})
    img, seg = SegDataset(cfg, "train").load(0)
    assert img.shape == (8, 8, 3)
    assert seg[0].tolist() == [255, 255, 0, 0, 1, 1, 149, 149]


def test_ade20k_layout_with_a_class_file_takes_its_count(tmp_path, caplog):
    # the layout of ADE20K with 3 classes of one's own: the class file sets the count (the ADE20K 150 is only the
    # default without a class list), label 0 is ignored and the start-up says so, a split file picks samples
    for sub in ("images/training", "annotations/training"):
        (tmp_path / sub).mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / f"images/training/{stem}.jpg")
        Image.fromarray(np.array([[0, 1, 2, 3]] * 8, np.uint8).repeat(2, 1)).save(
            tmp_path / f"annotations/training/{stem}.png")
    (tmp_path / "classes.txt").write_text("sky\ntree\nroad\n")
    (tmp_path / "train_split.txt").write_text("b\n")
    cfg = recipe("segmentation", {"data": {"root": str(tmp_path), "classes": "classes.txt",
                                  "train": {"split": "train_split.txt"}}})
    with caplog.at_level(logging.INFO, logger="uniformer.tasks.segmentation"):
        ds = SegDataset(cfg, "train")
    assert ds.num_classes == 3 and ds.classes == ["sky", "tree", "road"] and [s[0] for s in ds.samples] == ["b"]
    assert "label 0 of the label maps is ignored" in caplog.text
    assert ds.load(0)[1][0].tolist() == [255, 255, 0, 0, 1, 1, 2, 2]
    assert recipe("segmentation", {"data": {"root": str(tmp_path)}})["data"]["num_classes"] == 150
    with pytest.raises(ValueError, match="data.classes lists 3 names but data.num_classes is 150"):
        SegDataset(recipe("segmentation", {"data": {"root": str(tmp_path), "classes": "classes.txt",
                                                    "num_classes": 150}}), "train")


def test_dataset_error_paths(shapes, tmp_path, caplog):
    root = tmp_path / "bad"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    good = np.zeros((16, 16), np.uint8)
    for stem in ("ok", "garbage", "outofrange", "nomask"):
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / "images" / f"{stem}.png")
    write_garbage_image(root / "images" / "garbage.png")
    Image.fromarray(good).save(root / "masks" / "ok.png")
    Image.fromarray(good).save(root / "masks" / "garbage.png")
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(root / "masks" / "outofrange.png")
    Image.fromarray(good).save(root / "masks" / "noimage.png")
    cfg = recipe("segmentation", {"data": {"format": "folder", "root": str(root), "classes": ["bg", "fg"],
                                           "num_classes": 2, "train": {"images": "images", "masks": "masks"},
                                           "crop_size": [16, 16], "img_scale": [16, 16]}})
    with caplog.at_level(logging.WARNING):
        ds = SegDataset(cfg, "train")
        assert [s[0] for s in ds.samples] == ["garbage", "ok", "outofrange"]
        assert any("'nomask'" in r and "label map is missing" in r for r in ds.rejected)
        assert any("'noimage'" in r and "image is missing" in r for r in ds.rejected)
        samples = [ds[i] for i in range(3)]
    assert samples[0] is None and samples[2] is None and samples[1]["img"].shape == (3, 16, 16)
    assert "'garbage'" in caplog.text and "cannot be decoded" in caplog.text
    assert "'outofrange'" in caplog.text and "[7]" in caplog.text
    batch = seg_collate(samples)
    assert batch["ids"] == ["ok"] and batch["img"].shape == (1, 3, 16, 16)
    assert seg_collate([None, None]) is None
    # training on it never crashes: batches left with fewer than two readable samples (BatchNorm) are skipped
    cfg["model"] = {**cfg["model"], "backbone": dict(TINY_BACKBONE), "head": "fpn", "channels": 8,
                    "neck_channels": 8, "aux_head": False}
    cfg["train"].update(iters=3, batch_size=2, num_workers=0)
    with caplog.at_level(logging.WARNING):
        summary = train("segmentation", cfg, tmp_path / "run", show_progress=False)
    assert summary["skipped_batches"] == 3 and summary["steps"] == 3
    assert "skipped a batch with 1 readable samples" in (tmp_path / "run" / "train.log").read_text()


def test_original_segmentor_checkpoints_load(shapes, tmp_path):
    for head in ("upernet", "fpn"):
        seeded(1)
        cfg = tiny_cfg(shapes, head=head)
        source = build("segmentation", cfg)
        keys = set(source.state_dict())
        if head == "upernet":  # the original mmseg names
            assert {"decode_head.psp_modules.0.1.conv.weight", "decode_head.bottleneck.bn.running_mean",
                    "decode_head.lateral_convs.2.conv.weight", "decode_head.fpn_convs.0.bn.weight",
                    "decode_head.fpn_bottleneck.conv.weight", "decode_head.conv_seg.bias",
                    "auxiliary_head.convs.0.conv.weight", "auxiliary_head.conv_seg.weight"} <= keys
        else:
            assert {"neck.lateral_convs.0.conv.bias", "neck.fpn_convs.3.conv.weight",
                    "decode_head.scale_heads.0.0.conv.weight", "decode_head.scale_heads.3.4.bn.running_var",
                    "decode_head.conv_seg.weight"} <= keys
        sections = {}
        for k, v in source.state_dict().items():
            prefix, rest = k.split(".", 1)
            sections.setdefault(prefix, {})[rest] = v
        path = save_original_checkpoint(tmp_path / f"{head}.pth", sections)
        seeded(2)
        cfg["model"]["checkpoint"] = str(path)
        loaded = build("segmentation", cfg)
        for k, v in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    # a classifier for another number of classes: refused, or left out on request
    cfg = tiny_cfg(shapes, head="fpn", data={"classes": ["a", "b"], "num_classes": 2})
    cfg["model"]["checkpoint"] = str(tmp_path / "fpn.pth")
    with pytest.raises(CheckpointError, match="decode_head.conv_seg.weight"):
        build("segmentation", cfg)
    cfg["model"]["skip_mismatched"] = True
    model = build("segmentation", cfg)
    assert model.decode_head.conv_seg.weight.shape[0] == 2


def test_predict_writes_pictures(shapes, tmp_path):
    seeded()
    cfg = tiny_cfg(shapes)
    sections: dict = {}
    for k, v in build("segmentation", cfg).state_dict().items():
        prefix, rest = k.split(".", 1)
        sections.setdefault(prefix, {})[rest] = v
    weights = save_original_checkpoint(tmp_path / "fpn.pth", sections)  # an mmseg file: the recipe is cfg
    (tmp_path / "in").mkdir()
    write_garbage_image(tmp_path / "in" / "broken.png")
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(tmp_path / "in" / "plain.png")
    results = predict(weights, tmp_path / "in", tmp_path / "out", cfg=cfg)
    assert "error" in results[0] and "broken" in results[0]["image"]
    pic = Image.open(tmp_path / "out" / "plain_seg.png")
    labels = np.asarray(Image.open(tmp_path / "out" / "plain_labels.png"))
    assert pic.size == (56, 40) and labels.shape == (40, 56) and labels.max() < 4
    record = json.loads((tmp_path / "out" / "plain.json").read_text())
    assert sum(c["pixels"] for c in record["classes"]) == 40 * 56


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: segmentation\nmodel:\n  hed: upernet\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.hed'"):
        recipe("segmentation", bad)
    with pytest.raises(ConfigError, match="optim.lrr"):
        recipe("segmentation", None, ["optim.lrr=1e-3"])
    assert recipe("segmentation", None, ["optim.lr=1e-3"])["optim"]["lr"] == 1e-3
    with pytest.raises(ConfigError, match="'pose' recipe"):
        recipe("segmentation", {"task": "pose"})
    with pytest.raises(ConfigError, match="give exactly one"):
        recipe("segmentation", None, ["train.epochs=3"])


def test_shipped_recipes_load():
    recipes = sorted((CONFIGS / "segmentation").glob("*.yaml"))
    assert recipes
    for path in recipes:
        cfg = recipe("segmentation", path)
        if path.stem != "demo":
            assert cfg["model"]["head"] in ("upernet", "fpn") and cfg["data"]["num_classes"] == 150
            assert cfg["train"]["batch_size"] in (2, 4)  # per process, x 8 processes as the originals
