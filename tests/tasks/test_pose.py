"""Top-down pose: heatmap targets and decoding, OKS evaluation, training, datasets, original checkpoints."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from dense_helpers import (
    TINY_BACKBONE,
    build,
    edit_json,
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

from uniformer.tasks import CONFIGS
from uniformer.tasks import pose as P
from uniformer.tasks.dense.synthetic import COCO_FLIP_PAIRS, write_pose_coco
from uniformer.tasks.pose.data import PoseDataset, pose_collate
from uniformer.tasks.pose.decoding import (
    COCO_SIGMAS,
    affine_matrix,
    apply_affine,
    box_to_center_scale,
    decode_heatmaps,
    flip_back,
    gaussian_targets,
    oks_nms,
    rescore,
    warp,
)


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> Path:
    return write_pose_coco(tmp_path_factory.mktemp("pose") / "figures", n_train=6, n_val=4, size=(96, 96))


def tiny_cfg(root: Path, **over) -> dict:
    cfg = {
        "model": {"backbone": dict(TINY_BACKBONE), "deconv_channels": 16},
        "data": {"root": str(root), "train": {"annotations": "annotations/person_keypoints_train.json",
                                             "images": "train"},
                 "val": {"annotations": "annotations/person_keypoints_val.json", "images": "val",
                         "detections": None},
                 "input_size": [32, 64]},
        "train": {"epochs": None, "iters": 10, "batch_size": 4, "num_workers": 0, "log_every": 1},
        "checkpoint": {"every": 10},
        "optim": {"lr": 5e-3},
        "sched": {"name": "constant", "warmup_iters": 0},
        "test": {"use_gt_bbox": True, "batch_size": 8},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return recipe("pose", cfg)


def test_targets_and_decoding_round_trip():
    joints = np.array([[10.0, 20.0], [30.2, 5.7], [100.0, 100.0], [12.0, 40.0]])
    visible = np.array([1, 1, 1, 0], np.float32)
    target, weight = gaussian_targets(joints, visible, (12, 16), stride=4.0, sigma=2.0)
    assert target.shape == (4, 16, 12)
    assert weight.tolist() == [1, 1, 0, 0]  # off the heatmap, and invisible
    assert np.unravel_index(target[0].argmax(), target[0].shape) == (5, 3)  # 20/4 = row 5, 10/4 + .5 -> col 3
    assert target[0].max() == 1.0 and target[2].max() == 0.0
    # a sub-pixel Gaussian decodes within a quarter pixel (default) and closer with DARK
    yy, xx = np.mgrid[0:16, 0:12]
    true = np.array([5.3, 7.6])
    hm = torch.from_numpy(np.exp(-((xx - true[0]) ** 2 + (yy - true[1]) ** 2) / 8.0)).float()[None, None]
    center, scale = np.array([[6.0, 8.0]]), np.array([[12.0, 16.0]])  # heatmap pixel = image pixel
    default, maxval = decode_heatmaps(hm, center, scale, "default")
    dark, _ = decode_heatmaps(hm, center, scale, "unbiased")
    assert np.abs(default[0, 0] - true).max() <= 0.3 and maxval[0, 0] > 0.9
    assert np.abs(dark[0, 0] - true).max() < 0.1


def test_affine_crop_and_flip_back():
    image = np.zeros((100, 120, 3), np.uint8)
    image[40, 70] = 255
    center, scale = box_to_center_scale((50, 20, 30, 50), aspect=0.75)
    assert scale[0] / scale[1] == pytest.approx(0.75) and scale[1] == pytest.approx(50 * 1.25)
    for rotation in (0.0, 30.0):
        m = affine_matrix(center, scale, rotation, (48, 64))
        crop = warp(image, center, scale, rotation, (48, 64))
        expected = apply_affine(np.array([[70.0, 40.0]]), m)[0]
        found = np.unravel_index(crop[..., 0].argmax(), crop.shape[:2])[::-1]
        assert np.abs(np.array(found) - expected).max() <= 1.0
        back = apply_affine(expected[None], affine_matrix(center, scale, rotation, (48, 64), inverse=True))
        assert np.allclose(back, [[70.0, 40.0]])
    heat = torch.rand(1, 17, 8, 6)
    mirrored = heat.flip(-1)[:, [_swap(i) for i in range(17)]]
    assert torch.equal(flip_back(mirrored, COCO_FLIP_PAIRS, shift=False), heat)


def test_crop_uses_integer_pixel_centres():
    # a box exactly the size of the output, unpadded, is the identity warp (no half-pixel shift)
    image = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    center, scale = box_to_center_scale((0, 0, 48, 64), aspect=0.75, padding=1.0)
    assert np.array_equal(warp(image, center, scale, 0.0, (48, 64)), image)


def test_decoding_at_borders_and_of_empty_maps_follows_mmpose():
    hm = np.zeros((1, 4, 8, 8), np.float32)
    hm[0, 0, 4, 1], hm[0, 0, 4, 2] = 1.0, 0.5  # peak on column 1: not shifted
    hm[0, 1, 4, 2], hm[0, 1, 4, 3] = 1.0, 0.5  # peak on column 2: shifted a quarter towards the higher side
    hm[0, 2] = -1.0  # no positive value: heatmap position (-1, -1)
    hm[0, 3, 5, 5] = hm[0, 3, 6, 6] = 0.7  # a tie: the first maximum (row-major)
    center, scale = np.array([[4.0, 4.0]]), np.array([[8.0, 8.0]])  # heatmap pixel = image pixel
    coords, maxvals = decode_heatmaps(hm, center, scale, "default")
    assert coords[0, 0].tolist() == [1.0, 4.0] and coords[0, 1].tolist() == [2.25, 4.0]
    assert coords[0, 2].tolist() == [-1.0, -1.0] and maxvals[0, 2] == -1.0
    assert coords[0, 3].tolist() == [5.0, 5.0]
    # DARK blurs with zeros beyond the border: a peak near the edge decodes as in a larger empty map
    yy, xx = np.mgrid[0:10, 0:10]
    small = np.exp(-((xx - 2.4) ** 2 + (yy - 3.6) ** 2) / 8.0).astype(np.float32)
    large = np.zeros((30, 30), np.float32)
    large[10:20, 10:20] = small
    near, _ = decode_heatmaps(small[None, None], np.array([[5.0, 5.0]]), np.array([[10.0, 10.0]]), "unbiased")
    far, _ = decode_heatmaps(large[None, None], np.array([[15.0, 15.0]]), np.array([[30.0, 30.0]]), "unbiased")
    assert np.allclose(near[0, 0], far[0, 0] - 10.0, atol=1e-4)
    assert np.abs(near[0, 0] - [2.4, 3.6]).max() < 0.2


def test_rescoring_and_oks_nms_as_the_coco_evaluation():
    kpts = np.zeros((2, 17, 3), np.float32)
    kpts[0, :3, 2] = [0.1, 0.5, 0.7]
    assert rescore(kpts, [0.5, 0.9], 0.2).tolist() == pytest.approx([0.3, 0.0])
    # every joint counts, whatever its confidence: two people on the same spots are one person
    people = [{"keypoints": kpts[1] + [10.0, 20.0, 0.0], "score": s, "area": 1000.0} for s in (0.8, 0.9)]
    assert oks_nms(people, 0.9, COCO_SIGMAS) == [1]
    far = dict(people[0], keypoints=people[0]["keypoints"] + [50.0, 0.0, 0.0])
    assert oks_nms([people[0], far], 0.9, COCO_SIGMAS) == [1, 0]  # equal scores: the later first, as mmpose


def _swap(i: int) -> int:
    for a, b in COCO_FLIP_PAIRS:
        if i in (a, b):
            return b if i == a else a
    return i


def test_oks_evaluation_of_ground_truth_is_perfect(figures):
    cfg = tiny_cfg(figures)
    ds = PoseDataset(cfg, "val", train=False)
    people = []
    for iid, anns in ds.index.annotations.items():
        for a in anns:
            kp = np.asarray(a["keypoints"], float).reshape(-1, 3)
            kp[:, 2] = 0.9
            people.append({"image_id": iid, "keypoints": kp, "box_score": 1.0, "area": 1000.0})
    results = P._rescore_and_nms(people, cfg)
    stats = P._coco_keypoint_eval(ds, results, list(ds.index.images), P._sigmas(cfg))
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    shifted = [dict(p, keypoints=p["keypoints"] + [6.0, 0.0, 0.0]) for p in results]
    assert P._coco_keypoint_eval(ds, shifted, list(ds.index.images), P._sigmas(cfg))["AP"] < 0.5


def test_train_loss_falls_and_evaluates(figures, tmp_path):
    seeded()
    cfg = tiny_cfg(figures)
    summary = train("pose", cfg, tmp_path, show_progress=False)
    first, last = losses_fell(summary["history"])
    assert last < first, summary["history"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("AP", "AP50", "AP75", "AR"):
        assert 0.0 <= m[f"val_{key}"] <= 1.0
    assert m["val_num_images"] == 4 and m["val_skipped_images"] == []
    again = evaluate(tmp_path / "last.pt")  # the task and recipe come from the checkpoint
    assert again["AP"] == pytest.approx(m["val_AP"], abs=1e-9)
    batch = pose_collate([PoseDataset(cfg, "train")[i] for i in range(2)])
    assert batch["img"].shape == (2, 3, 64, 32) and batch["target"].shape == (2, 17, 16, 8)


def test_detection_boxes_and_error_paths(figures, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(figures, root)
    ann = root / "annotations" / "person_keypoints_val.json"

    def corrupt(data):
        data["annotations"][0]["image_id"] = 999  # an image that is not in the file
        data["annotations"][1]["bbox"] = [5, 5, 0, 10]  # empty box
        data["annotations"][2]["keypoints"] = [1, 2, 2]  # wrong length
        data["images"].append({"id": 77, "file_name": "missing.jpg", "width": 96, "height": 96})
    edit_json(ann, corrupt)
    last = json.loads(ann.read_text())["annotations"][-1]  # untouched: its image becomes undecodable
    assert last["id"] not in [a["id"] for a in json.loads(ann.read_text())["annotations"][:3]]
    write_garbage_image(root / "val" / f"val_{last['image_id'] - 1:04d}.jpg")
    dets = root / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 80], "score": 0.9},
                                {"image_id": 555, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9},
                                {"image_id": 2, "category_id": 1, "bbox": [1, 1, -5, 5], "score": 0.9}]))
    cfg = tiny_cfg(root, test={"use_gt_bbox": False})
    cfg["data"]["val"]["detections"] = "dets.json"
    with caplog.at_level(logging.WARNING):
        ds = PoseDataset(cfg, "val", train=False)
    text = "\n".join(ds.rejected)
    assert "references image 999, which is not in the file" in text
    assert "image 77" in text and "file not found" in text
    assert "[5, 5, 0, 10] is empty" in text
    assert "expected 51 keypoint values, got 3" in text
    assert "detection 1 references image 555" in text and "detection 2 (image 2)" in text
    assert len(ds) == 1 and ds.samples[0]["score"] == 0.9
    gt = PoseDataset(recipe("pose", dict(cfg, test={**cfg["test"], "use_gt_bbox": True})), "val", train=False)
    broken = [i for i, s in enumerate(gt.samples) if s["image_id"] == last["image_id"]]
    with caplog.at_level(logging.WARNING):
        assert gt[broken[0]] is None
    assert f"image {last['image_id']}" in caplog.text and "cannot be decoded" in caplog.text


def save_as_mmpose(model, path: Path) -> Path:
    """`model`'s weights in an original mmpose file (backbone / keypoint_head sections)."""
    sections: dict = {"backbone": {}, "keypoint_head": {}}
    for k, v in model.state_dict().items():
        prefix, rest = k.split(".", 1)
        sections[prefix][rest] = v
    return save_original_checkpoint(path, sections)


def test_original_pose_checkpoint_loads(figures, tmp_path):
    seeded(1)
    cfg = tiny_cfg(figures)
    source = build("pose", cfg)
    keys = set(source.state_dict())
    assert {"keypoint_head.deconv_layers.0.weight", "keypoint_head.deconv_layers.1.running_var",
            "keypoint_head.deconv_layers.3.weight", "keypoint_head.deconv_layers.7.bias",
            "keypoint_head.final_layer.weight", "keypoint_head.final_layer.bias",
            "backbone.norm4.weight"} <= keys
    assert source.keypoint_head.deconv_layers[0].bias is None
    path = save_as_mmpose(source, tmp_path / "pose.pth")
    seeded(2)
    cfg["model"]["checkpoint"] = str(path)
    loaded = build("pose", cfg)
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_predict_draws_skeletons(figures, tmp_path):
    seeded()
    cfg = tiny_cfg(figures)
    weights = save_as_mmpose(build("pose", cfg), tmp_path / "pose.pth")  # an mmpose file: the recipe is cfg
    image = figures / "val" / "val_0000.jpg"
    results = predict(weights, [image], tmp_path, cfg=cfg, boxes={"val_0000.jpg": [[5, 5, 40, 80, 0.8],
                                                                                [50, 5, 40, 80]]})
    pic = Image.open(tmp_path / "val_0000_pose.png")
    assert pic.size == Image.open(image).size
    record = json.loads((tmp_path / "val_0000.json").read_text())
    assert len(record["people"]) == 2 and len(record["people"][0]["keypoints"]) == 17
    assert results[0]["people"][1]["box"] == [50.0, 5.0, 40.0, 80.0]
    with pytest.raises(ValueError, match="multiples of 32"):
        build("pose", tiny_cfg(figures, data={"input_size": [48, 64]}))


def test_shipped_recipes_load():
    recipes = sorted(p for p in (CONFIGS / "pose").glob("*.yaml") if p.stem != "demo")
    assert len(recipes) == 6
    sizes = {tuple(recipe("pose", p)["data"]["input_size"]) for p in recipes}
    assert {recipe("pose", p)["train"]["batch_size"] for p in recipes} == {128, 64}  # x 8 processes = 1024, 512
    assert sizes == {(192, 256), (288, 384), (320, 448)}


def test_predict_takes_person_boxes_from_a_coco_detections_file_or_a_detector(figures, tmp_path, capsys):
    import shutil
    from types import SimpleNamespace

    import yaml

    from uniformer.cli import main

    seeded()
    cfg = tiny_cfg(figures)
    weights = save_as_mmpose(build("pose", cfg), tmp_path / "pose.pth")
    recipe_file = tmp_path / "pose.yaml"
    recipe_file.write_text(yaml.safe_dump({"task": "pose", **cfg}))
    image = tmp_path / "000000000007.jpg"  # a COCO file name: image_id 7
    shutil.copy(figures / "val" / "val_0000.jpg", image)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [50, 5, 40, 80], "score": 0.7},
                                {"image_id": 7, "category_id": 3, "bbox": [1, 1, 9, 9], "score": 0.9},  # no person
                                {"image_id": 8, "category_id": 1, "bbox": [1, 1, 9, 9], "score": 0.9}]))
    args = ["predict", "--checkpoint", str(weights), "--config", str(recipe_file), "--json", "--out",
            str(tmp_path / "out")]
    assert main([*args, "--boxes", str(dets), str(image)]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert [p["box"] for p in record["people"]] == [[50.0, 5.0, 40.0, 80.0]]
    same = predict(weights, [image], tmp_path / "api", cfg=cfg, boxes={image.name: [[50, 5, 40, 80, 0.7]]})
    assert record["people"] == same[0]["people"]
    # without boxes the whole image is one person, and the command says so
    assert main([*args, str(image)]) == 0
    captured = capsys.readouterr()
    assert "no --boxes or --detector" in captured.err
    assert json.loads(captured.out)[0]["people"][0]["box"] == [0.0, 0.0, 96.0, 96.0]
    # a detector's person boxes (x1 y1 x2 y2 -> x y w h); a detector without a person class gives all its boxes
    detector = SimpleNamespace(task=SimpleNamespace(classes=["person", "dog"]), predict=lambda inputs, score_thr: [
        {"image": str(image), "detections": [{"box": [50, 5, 90, 85], "name": "person", "score": 0.8},
                                             {"box": [0, 0, 9, 9], "name": "dog", "score": 0.9}]}])
    assert P.boxes_from_detector(detector, [image]) == {image.name: [[50, 5, 40, 80, 0.8]]}
    detector.task.classes = ["dog", "cat"]
    assert len(P.boxes_from_detector(detector, [image])[image.name]) == 2
    assert main([*args, "--boxes", str(dets), "--detector", str(weights), str(image)]) == 2
    assert "choose one" in capsys.readouterr().err
    assert main([*args, "--detector", str(weights), str(image)]) == 2  # an mmpose file says no detector recipe
    assert "records no task or recipe" in capsys.readouterr().err
