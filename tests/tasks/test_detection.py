"""Detection and instance segmentation: the torchvision Mask R-CNN on UniFormer, COCO data and evaluation,
original mmdet checkpoints, pictures."""
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

from uniformer.engine.optim import LRSchedule
from uniformer.tasks import CONFIGS
from uniformer.tasks import detection as D
from uniformer.tasks.dense.coco import coco_ground_truth, evaluate_instances, instance_results
from uniformer.tasks.dense.synthetic import write_shapes_coco
from uniformer.tasks.dense.weights import load_task_weights
from uniformer.tasks.detection.data import DetDataset, det_collate


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_coco(tmp_path_factory.mktemp("det") / "shapes", n_train=6, n_val=3, size=(96, 96))


def tiny_cfg(root: Path, **over) -> dict:
    cfg = {
        "model": {"backbone": {**TINY_BACKBONE, "window_size": 4}, "fpn_channels": 32, "box_head_dim": 64,
                  "mask_head_channels": [32], "anchor_sizes": [16, 32, 64, 128, 256], "rpn_batch": 64,
                  "roi_batch": 64},
        "data": {"root": str(root), "train": {"annotations": "annotations/instances_train.json", "images": "train"},
                 "val": {"annotations": "annotations/instances_val.json", "images": "val"},
                 "train_scales": [96], "test_scale": 96, "max_size": 96},
        "train": {"epochs": None, "iters": 10, "batch_size": 2, "num_workers": 0, "log_every": 1},
        "checkpoint": {"every": 10},
        "optim": {"lr": 1e-3},
        "sched": {"name": "constant", "warmup_iters": 0},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return recipe("detection", cfg)


def test_model_follows_the_original_config(shapes):
    cfg = recipe("detection", {"model": {"backbone": TINY_BACKBONE}, "data": {"classes": ["a", "b", "c"]}})
    model = build("detection", cfg)
    gen = model.rpn.anchor_generator
    assert gen.sizes == (32, 64, 128, 256, 512) and gen.ratios == (0.5, 1.0, 2.0)
    assert gen.strides == (4, 8, 16, 32, 64)  # fixed, not padded size / feature size
    assert model.rpn.batch_size_per_image == 256 and model.rpn.positive_fraction == 0.5
    assert model.rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert model.rpn._post_nms_top_n == {"training": 1000, "testing": 1000} and model.rpn.nms_thresh == 0.7
    assert model.rpn.fg_iou_thresh == 0.7 and model.rpn.bg_iou_thresh == 0.3 and model.rpn.min_pos_iou == 0.3
    assert model.rpn.box_loss == "l1"
    roi = model.roi_heads
    assert roi.sampling.batch_size_per_image == 512 and roi.sampling.positive_fraction == 0.25
    assert roi.sampling.iou_thresh == 0.5 and roi.sampling.low_quality
    assert roi.box_stds == (0.1, 0.1, 0.2, 0.2) and roi.nms_thresh == 0.5 and roi.box_loss == "l1"
    assert roi.score_thresh == 0.05 and roi.detections_per_img == 100
    assert roi.box_roi_pool.output_size == 7 and roi.mask_roi_pool.output_size == 14
    assert roi.box_roi_pool.aligned and roi.box_roi_pool.finest_scale == 56 and roi.box_roi_pool.sampling_ratio == 0
    assert roi.box_predictor.cls_score.out_features == 4 and roi.mask_predictor.mask_fcn_logits.out_channels == 4
    assert model.backbone.body.blocks3[0].attn is not None  # built with the UniFormer body
    feats = model.backbone(torch.zeros(1, 3, 128, 192))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert all(f.shape[1] == 256 for f in feats.values())


def test_full_size_parameter_count():
    """Mask R-CNN on UniFormer-S h14: about 41M parameters, as the paper reports."""
    from uniformer.profiling import count_params

    model = build("detection", recipe("detection", {"data": {"classes": [str(i) for i in range(80)]}}))
    assert count_params(model.backbone.body) == 21_033_280
    assert 40.5e6 < count_params(model) < 42.5e6


def test_train_loss_falls_and_evaluates(shapes, tmp_path):
    seeded()
    cfg = tiny_cfg(shapes, train={"amp": "none"})  # float32: the re-evaluation must reproduce the AP exactly
    summary = train("detection", cfg, tmp_path, show_progress=False)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(
        summary["history"][0])
    first, last = losses_fell(summary["history"])
    assert last < first, summary["history"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50"):
        assert 0.0 <= m[f"val_{key}"] <= 1.0
    assert m["val_num_images"] == 3
    again = evaluate(tmp_path / "last.pt")  # the task and recipe come from the checkpoint
    assert again["bbox_AP"] == pytest.approx(m["val_bbox_AP"], abs=1e-9)

    assert again["segm_size_convention"].startswith("box area")


def test_coco_evaluation_of_ground_truth_is_perfect(shapes):
    cfg = tiny_cfg(shapes)
    ds = DetDataset(cfg, "val", train=False)
    outs = {}
    for i, iid in enumerate(ds.image_ids):
        _, target = ds[i]
        n = len(target["boxes"])
        outs[iid] = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(n),
                     "masks": target["masks"].bool()}
    boxes, segms = [], []
    for iid, out in outs.items():
        b, s = instance_results(out, iid, ds.cat_ids)
        boxes += b
        segms += s
    gt = coco_ground_truth(ds.index)
    assert evaluate_instances(gt, boxes, "bbox", list(outs))["bbox_AP"] == pytest.approx(1.0)
    assert evaluate_instances(gt, segms, "segm", list(outs))["segm_AP"] > 0.95  # polygons vs their rasterisation
    shifted = [dict(b, bbox=[b["bbox"][0] + 0.6 * b["bbox"][2]] + b["bbox"][1:]) for b in boxes]
    assert evaluate_instances(gt, shifted, "bbox", list(outs))["bbox_AP"] < 0.2


def test_dataset_error_paths(shapes, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(shapes, root)
    ann = root / "annotations" / "instances_train.json"

    def corrupt(data):
        a = data["annotations"]
        a[0]["image_id"] = 4242  # references an image that is not in the file
        a[1]["bbox"] = [10, 10, 0, 0]  # empty box
        a[2]["bbox"] = [95.5, 10, 20, 20]  # degenerate once clipped to the 96x96 image
        a[3]["segmentation"] = [[200, 200, 220, 200, 220, 230]]  # polygon outside the image
        a[4]["segmentation"] = [[1, 2, 3, 4]]  # two points
        data["images"].append({"id": 99, "file_name": "nowhere.jpg", "width": 96, "height": 96})
        data["annotations"].append({"id": 5000, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5],
                                    "segmentation": [[1, 1, 5, 1, 5, 5]], "area": 8, "iscrowd": 0})
    edit_json(ann, corrupt)
    write_garbage_image(root / "train" / "train_0001.jpg")
    cfg = tiny_cfg(root)
    with caplog.at_level(logging.WARNING):
        ds = DetDataset(cfg, "train")
    text = "\n".join(ds.rejected)
    data = json.loads(ann.read_text())
    ids = [a["id"] for a in data["annotations"][:5]]
    assert f"annotation {ids[0]} references image 4242, which is not in the file" in text
    assert f"annotation {ids[1]} " in text and "is empty" in text
    assert f"annotation {ids[2]} " in text and "degenerate" in text
    assert f"annotation {ids[3]} " in text and "entirely outside" in text
    assert f"annotation {ids[4]} " in text and "has 2 points" in text
    assert "image 99" in text and "file not found" in text
    assert "annotation 5000 references image 99, which is left out" in text
    bad = ds.image_ids.index(2)
    with caplog.at_level(logging.WARNING):
        assert ds[bad] is None
    assert "image 2" in caplog.text and "cannot be decoded" in caplog.text
    images, targets = det_collate([ds[i] for i in range(len(ds))])
    assert len(images) == len(ds) - 1
    for img, t in zip(images, targets):
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"])
        assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all() and t["masks"].shape[1:] == img.shape[1:]
    # every remaining box encloses its mask
    for t in targets:
        for box, mask in zip(t["boxes"], t["masks"]):
            ys, xs = np.nonzero(mask.numpy())
            assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1 and ys.max() <= box[3]


def test_detr_crop_keeps_boxes_and_masks_together(shapes):
    cfg = tiny_cfg(shapes, data={"crop_policy": "detr", "crop_scales": [64], "crop_size": [40, 60]})
    ds = DetDataset(cfg, "train")
    rng = np.random.default_rng(3)
    _, target = ds[0]
    image = np.zeros((96, 96, 3), np.uint8)
    for _ in range(5):
        img, boxes, labels, masks = ds._detr_crop(image, target["boxes"].numpy(), target["labels"].numpy(),
                                                  target["masks"].numpy(), rng)
        assert masks.shape[1:] == img.shape[:2] and len(boxes) == len(labels) == len(masks)
        for box, mask in zip(boxes, masks):
            ys, xs = np.nonzero(mask)
            assert len(xs) and box[0] <= xs.min() + 1 and xs.max() <= box[2] + 1


def _mmdet_layout(model) -> dict:
    """Write a torchvision Mask R-CNN in mmdet's names and class layout (background last, no background rows)."""
    sd = model.state_dict()
    out = {"backbone": {k[len("backbone.body."):]: v for k, v in sd.items() if k.startswith("backbone.body.")},
           "neck": {}, "rpn_head": {}, "roi_head": {}}
    for i in range(4):
        for p in ("weight", "bias"):
            out["neck"][f"lateral_convs.{i}.conv.{p}"] = sd[f"backbone.fpn.inner_blocks.{i}.0.{p}"]
            out["neck"][f"fpn_convs.{i}.conv.{p}"] = sd[f"backbone.fpn.layer_blocks.{i}.0.{p}"]
    for p in ("weight", "bias"):
        out["rpn_head"][f"rpn_conv.{p}"] = sd[f"rpn.head.conv.0.0.{p}"]
        out["rpn_head"][f"rpn_cls.{p}"] = sd[f"rpn.head.cls_logits.{p}"]
        out["rpn_head"][f"rpn_reg.{p}"] = sd[f"rpn.head.bbox_pred.{p}"]
        r = out["roi_head"]
        r[f"bbox_head.shared_fcs.0.{p}"] = sd[f"roi_heads.box_head.fc6.{p}"]
        r[f"bbox_head.shared_fcs.1.{p}"] = sd[f"roi_heads.box_head.fc7.{p}"]
        cls = sd[f"roi_heads.box_predictor.cls_score.{p}"]
        r[f"bbox_head.fc_cls.{p}"] = torch.cat([cls[1:], cls[:1]])
        r[f"bbox_head.fc_reg.{p}"] = sd[f"roi_heads.box_predictor.bbox_pred.{p}"][4:]
        r[f"mask_head.convs.0.conv.{p}"] = sd[f"roi_heads.mask_head.0.0.{p}"]
        r[f"mask_head.upsample.{p}"] = sd[f"roi_heads.mask_predictor.conv5_mask.{p}"]
        r[f"mask_head.conv_logits.{p}"] = sd[f"roi_heads.mask_predictor.mask_fcn_logits.{p}"][1:]
    return out


def test_original_mmdet_checkpoint_loads(shapes, tmp_path):
    seeded(1)
    cfg = tiny_cfg(shapes)
    source = build("detection", cfg)
    with torch.no_grad():  # mmdet has no background deltas / mask logits: they load as zeros
        source.roi_heads.box_predictor.bbox_pred.weight[:4] = 0
        source.roi_heads.box_predictor.bbox_pred.bias[:4] = 0
        source.roi_heads.mask_predictor.mask_fcn_logits.weight[:1] = 0
        source.roi_heads.mask_predictor.mask_fcn_logits.bias[:1] = 0
    sections = _mmdet_layout(source)
    assert sections["roi_head"]["bbox_head.fc_cls.weight"].shape[0] == 4  # 3 classes + background (last)
    path = save_original_checkpoint(tmp_path / "mask_rcnn.pth", sections)
    seeded(2)
    cfg["model"]["checkpoint"] = str(path)
    loaded = build("detection", cfg)
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # the same weights detect the same boxes
    x = [np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)]
    a, b = D._detect(source, x, cfg)[0], D._detect(loaded, x, cfg)[0]
    assert torch.allclose(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
    # a classification checkpoint fills only the backbone
    bare = tmp_path / "imagenet.pth"
    torch.save({"model": sections["backbone"]}, bare)
    seeded(3)
    fresh = build("detection", tiny_cfg(shapes))
    info = load_task_weights(fresh, bare, task="detection", backbone=fresh.backbone.body,
                             backbone_prefix="backbone.body.")
    assert info["format"] == "backbone-only"
    assert torch.equal(fresh.backbone.body.patch_embed1.proj.weight, source.backbone.body.patch_embed1.proj.weight)


def test_predict_draws_boxes_and_masks(shapes, tmp_path):
    seeded()
    cfg = tiny_cfg(shapes, test={"score_thresh": 0.0})
    model = build("detection", cfg)
    path = save_original_checkpoint(tmp_path / "weights.pth", _mmdet_layout(model))  # the recipe: cfg
    image = shapes / "val" / "val_0000.jpg"
    predict(path, [image], tmp_path, cfg=cfg, score_thr=0.0)
    pic = Image.open(tmp_path / "val_0000_det.png")
    assert pic.size == Image.open(image).size
    record = json.loads((tmp_path / "val_0000.json").read_text())
    assert record["detections"] and {"box", "label", "name", "score", "mask_rle"} <= set(record["detections"][0])
    assert record["detections"][0]["name"] in ("circle", "square", "triangle")


def test_recipes_and_step_schedule():
    recipes = {p.stem: recipe("detection", p) for p in sorted((CONFIGS / "detection").glob("*.yaml"))}
    assert len(recipes) == 7 and "demo" in recipes  # Mask R-CNN S/B 1x, 3x+MS; Cascade S/B; demo
    one = recipes["mask_rcnn_uniformer_small_h14_1x_coco"]
    assert one["optim"]["lr"] == 1e-4 and one["optim"]["weight_decay"] == 0.05 and one["train"]["epochs"] == 12
    assert one["sched"]["steps"] == [8, 11] and one["model"]["backbone"]["stage3"] == "hybrid"
    ms = recipes["mask_rcnn_uniformer_small_h14_3x_ms_coco"]
    assert ms["data"]["train_scales"][0] == 480 and ms["data"]["train_scales"][-1] == 800
    assert ms["train"]["epochs"] == 36 and ms["data"]["crop_policy"] == "detr"
    assert one["train"]["batch_size"] * 8 == 16  # 2 per process x 8 processes, as the original
    s, per_epoch = one["sched"], 100
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    sched = LRSchedule(opt, 1e-4, 1200, kind=s["name"], warmup_steps=s["warmup_iters"], warmup_ratio=s["warmup_ratio"],
                       milestones=[m * per_epoch for m in s["steps"]], gamma=s["gamma"])
    assert sched.lr_at(0) == pytest.approx(1e-7)
    assert sched.lr_at(7 * per_epoch) == pytest.approx(1e-4)
    assert sched.lr_at(8 * per_epoch) == pytest.approx(1e-5)
    assert sched.lr_at(11 * per_epoch) == pytest.approx(1e-6)


def test_mask_ap_by_size_follows_mmdet_2_11_box_area():
    """mmdet 2.11 left each mask result's bbox in place, so pycocotools sized detections by box area: a false
    positive with a thin (small) mask in a large box counts against APl. `segm_area="mask"` sizes it by its mask."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    h = w = 200
    square = np.zeros((h, w), np.uint8)
    square[20:120, 20:120] = 1
    thin = np.zeros((h, w), np.uint8)
    np.fill_diagonal(thin[40:190, 40:190], 1)  # a small mask (150 pixels) in a large box (150 x 150)
    rle = mask_utils.encode(np.asfortranarray(square))
    rle["counts"] = rle["counts"].decode("ascii")
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": w, "height": h}], "categories": [{"id": 1, "name": "a"}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "area": 10000.0,
                                   "bbox": [20, 20, 100, 100], "iscrowd": 0}]}
    gt.createIndex()
    out = {"boxes": torch.tensor([[20.0, 20.0, 120.0, 120.0], [40.0, 40.0, 190.0, 190.0]]),
           "scores": torch.tensor([0.5, 0.9]), "labels": torch.tensor([1, 1]),
           "masks": torch.from_numpy(np.stack([square, thin])).bool()}
    _, by_box = instance_results(out, 1, [1], "box")
    _, by_mask = instance_results(out, 1, [1], "mask")
    assert all("bbox" in r for r in by_box) and not any("bbox" in r for r in by_mask)
    box_metrics = evaluate_instances(gt, by_box, "segm", [1])
    mask_metrics = evaluate_instances(gt, by_mask, "segm", [1])
    assert box_metrics["segm_AP"] == pytest.approx(mask_metrics["segm_AP"])  # overall AP does not depend on it
    assert mask_metrics["segm_APl"] == pytest.approx(1.0) and box_metrics["segm_APl"] < 0.6
