"""The detection, segmentation and pose test pipelines reproduce the original UniFormer code's outputs.

Each case of `../shared/conformance/dense` (see its README) holds a tiny model's weights in the
original checkpoint layout, its settings, the uint8 inputs and the outputs of the original
mmdetection 2.11 / mmsegmentation 0.13 / mmpose 0.16 pipelines. Every test builds the model through the package's
recipe, loads the weights through the package's loader of original checkpoints, and runs the
inference the package's `eval` / `predict` use, from the uint8 image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from uniformer.tasks import build_task, load_recipe
from uniformer.tasks.detection.data import resize_keep_ratio as det_resize_keep_ratio
from uniformer.tasks.detection.detector import detect
from uniformer.tasks.pose import decoding as pose_decoding
from uniformer.tasks.pose.decoding import (
    COCO_SIGMAS,
    decode_heatmaps,
    estimate_poses,
    normalize_crop,
    oks_nms,
    person_crops,
    topdown_heatmaps,
    warp,
)
from uniformer.tasks.segmentation.data import resize_keep_ratio, scaled_size
from uniformer.tasks.segmentation.evaluation import infer_probs


def recipe(task: str, cfg) -> dict:
    return load_recipe(cfg, task=task)


def build(task: str, cfg):
    return build_task(recipe(task, cfg)).build_model()


def _original_checkpoint(case: dict, path: Path) -> str:
    torch.save({"meta": {"mmcv_version": "1.3.8", "config": "conformance case"}, "state_dict": case["state_dict"]},
               path)
    return str(path)


def _backbone(tiny: dict) -> dict:
    """The package's backbone section for the original's `embed_dim` / `layers` / `head_dim` settings."""
    stage3 = "hybrid" if tiny.get("hybrid") else "window" if tiny.get("windows") else "global"
    return {"name": "uniformer_small", "stage3": stage3, "drop_path_rate": tiny["drop_path_rate"],
            "kwargs": {"depths": tiny["layers"], "embed_dims": tiny["embed_dim"], "head_dim": tiny["head_dim"]}}


# --- segmentation ------------------------------------------------------------------------------------
def _seg_recipe(case: dict, checkpoint: str) -> dict:
    """The package recipe of a segmentation case: head widths from the checkpoint's tensors, the
    test resize from the original test pipeline."""
    c, sd = case["config"], case["state_dict"]
    model = {"backbone": _backbone(c["tiny_backbone"]), "head": c["kind"], "checkpoint": checkpoint,
             "channels": int(sd["decode_head.conv_seg.weight"].shape[1]),
             "aux_head": "auxiliary_head.conv_seg.weight" in sd}
    if model["aux_head"]:
        model["aux_channels"] = int(sd["auxiliary_head.conv_seg.weight"].shape[1])
    if c["kind"] == "fpn":
        model["neck_channels"] = int(sd["neck.lateral_convs.0.conv.weight"].shape[0])
    transforms = c["test_pipeline"][-1]["transforms"]
    align = [t for t in transforms if t["type"] == "AlignResize"]
    return recipe("segmentation", {
        "model": model,
        "data": {"format": "folder", "num_classes": c["num_classes"], "img_scale": list(c["img_scale"]),
                 "mean": list(c["mean"]), "std": list(c["std"])},
        "test": {"mode": "whole", "size_divisor": align[0]["size_divisor"] if align else None},
    })


PROB_TOL = 1e-4


def _check_probs(found: torch.Tensor, expected: torch.Tensor, stride: int = 1, labels: torch.Tensor | None = None):
    """Probabilities within PROB_TOL, and the same labels, at the reference's subsampling `stride`;
    full-resolution `labels` must agree wherever our two best classes are further apart than the
    probability tolerance (the networks agree to float noise, ~1e-5 in probability, so a pixel
    whose two best classes tie closer than that is decided by the noise, not by the pipeline)."""
    sub = found[:, ::stride, ::stride]
    assert sub.shape == expected.shape
    err = (sub - expected).abs().max().item()
    assert err <= PROB_TOL, f"probabilities differ by up to {err:.2e}"
    assert torch.equal(sub.argmax(0), expected.argmax(0)), "argmax labels differ"
    if labels is not None:
        top2 = found.topk(2, dim=0).values
        decided = (top2[0] - top2[1]) > 2 * PROB_TOL
        assert decided.float().mean() > 0.999, "more than 0.1% of the pixels are ties"
        differ = (found.argmax(0) != labels.long()) & decided
        assert not differ.any(), f"{int(differ.sum())} labels differ, e.g. at {differ.nonzero()[:3].tolist()}"


@pytest.mark.parametrize("name", ["seg_upernet", "seg_fpn"])
def test_segmentation_matches_original(name, load_case, tmp_path):
    case = load_case(name)
    c, inputs, outputs = case["config"], case["inputs"], case["outputs"]
    cfg = _seg_recipe(case, _original_checkpoint(case, tmp_path / f"{name}.pth"))
    model = build("segmentation", cfg).eval()
    num_classes = c["num_classes"]
    for key in ("up", "down"):  # the resized uint8 image, then whole-image probabilities at the original size
        image = inputs[f"image_{key}"].numpy()
        resized = resize_keep_ratio(image, cfg["data"]["img_scale"], size_divisor=cfg["test"]["size_divisor"])
        assert np.array_equal(resized, inputs[f"pipeline_resized_{key}"][0].numpy())
        probs = infer_probs(model, image, cfg["data"], cfg["test"], num_classes)
        _check_probs(probs, outputs[f"probs_{key}"], outputs[f"probs_{key}_stride"], outputs[f"labels_{key}"])
    image = inputs["image_up"].numpy()
    for ratio, expected in zip(c["ms_ratios"], inputs["pipeline_resized_up_ms"]):
        resized = resize_keep_ratio(image, scaled_size(cfg["data"]["img_scale"], ratio),
                                    size_divisor=cfg["test"]["size_divisor"])
        assert np.array_equal(resized, expected.numpy())
    ms = infer_probs(model, image, cfg["data"], {**cfg["test"], "scales": list(c["ms_ratios"]), "flip": True},
                     num_classes)
    _check_probs(ms, outputs["probs_up_ms_flip"])
    slide_cfg = {**cfg["test"], "mode": "slide", "crop_size": c["slide"]["crop_size"], "stride": c["slide"]["stride"]}
    slide = infer_probs(model, image, cfg["data"], slide_cfg, num_classes)
    _check_probs(slide, outputs["probs_up_slide"])


# --- pose --------------------------------------------------------------------------------------------
KEYPOINT_TOL, SCORE_TOL = 1e-3, 1e-5
# OpenCV's bilinear warp is fixed-point and its rounding differs between correct builds and CPUs: crops may
# differ from the reference by 1 grey level, seen on up to 91 of 147,456 values (0.06%) of a crop. The bound:
# never more than 1 level, on at most 0.2% of a crop's values.
CROP_LEVELS_TOL, CROP_VALUES_FRACTION = 1, 2e-3


def _check_crop(crop: np.ndarray, expected: np.ndarray, i: int):
    assert crop.shape == expected.shape and crop.dtype == expected.dtype == np.uint8, f"crop {i}"
    diff = np.abs(crop.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= CROP_LEVELS_TOL, f"crop {i} differs by up to {diff.max()} grey levels"
    assert (diff > 0).mean() <= CROP_VALUES_FRACTION, f"crop {i}: {(diff > 0).sum()} of {diff.size} values differ"


def _pose_recipe(case: dict, checkpoint: str) -> dict:
    c, sd = case["config"], case["state_dict"]
    deconvs = sorted({int(k.split(".")[2]) for k in sd if k.startswith("keypoint_head.deconv_layers.")
                      and sd[k].ndim == 4})
    t = c["test_cfg"]
    return recipe("pose", {
        "model": {"backbone": _backbone(c["tiny_backbone"]), "deconv_channels": c["deconv_channels"],
                  "num_deconv": len(deconvs), "final_kernel": int(sd["keypoint_head.final_layer.weight"].shape[-1]),
                  "checkpoint": checkpoint},
        "data": {"input_size": list(c["input_size_wh"]), "flip_pairs": [list(p) for p in c["flip_pairs"]],
                 "sigmas": list(c["sigmas"])},
        "test": {"flip": t["flip_test"], "shift_heatmap": t["shift_heatmap"], "post_process": t["post_process"],
                 "modulate_kernel": t["modulate_kernel"], "vis_thr": c["vis_thr"], "oks_thr": c["oks_thr"]},
    })


def _check_keypoints(found: np.ndarray, expected: torch.Tensor):
    expected = expected.numpy()
    err_xy = np.abs(found[..., :2] - expected[..., :2]).max()
    err_score = np.abs(found[..., 2] - expected[..., 2]).max()
    assert err_xy <= KEYPOINT_TOL, f"keypoints differ by up to {err_xy:.2e} px"
    assert err_score <= SCORE_TOL, f"keypoint scores differ by up to {err_score:.2e}"


def test_pose_topdown_matches_original(load_case, tmp_path, monkeypatch):
    case = load_case("pose_topdown")
    inputs, outputs = case["inputs"], case["outputs"]
    cfg = _pose_recipe(case, _original_checkpoint(case, tmp_path / "pose.pth"))
    model = build("pose", cfg).eval()
    image = inputs["image"].numpy()
    boxes = inputs["boxes_xywhs"].tolist()
    flip_pairs = cfg["data"]["flip_pairs"]
    # the crops: float32 centre / scale, OpenCV's warp, the normalised batch
    batch = person_crops(image, boxes, cfg["data"])
    assert np.array_equal(batch["center"], outputs["centers"].numpy())
    assert np.array_equal(batch["scale"], outputs["scales_200"].numpy() * np.float32(200.0))  # mmpose: scale * 200
    ref_crops = inputs["crops_uint8"].numpy()
    mean, std = cfg["data"]["mean"], cfg["data"]["std"]
    for i, (center, scale) in enumerate(zip(batch["center"], batch["scale"])):
        crop = warp(image, center, scale, 0.0, cfg["data"]["input_size"])
        _check_crop(crop, ref_crops[i], i)
        assert torch.equal(batch["img"][i], normalize_crop(crop, mean, std))  # the batch is of these crops
    # the normalisation (exact up to float32 rounding), on the original's crops
    ref_batch = torch.stack([normalize_crop(c, mean, std) for c in ref_crops])
    assert torch.allclose(ref_batch, inputs["batch_tensor"], atol=1e-6)
    # heatmaps with the flip test, and every person's decoded keypoints: strict, from the original's batch
    heat = topdown_heatmaps(model, inputs["batch_tensor"], flip_pairs, flip=True, shift=True)
    assert np.abs(heat - outputs["heatmaps_flip_avg"].numpy()).max() <= SCORE_TOL
    coords, maxvals = decode_heatmaps(heat, batch["center"], batch["scale"], "default")
    _check_keypoints(np.concatenate([coords, maxvals[..., None]], -1), outputs["keypoints"])
    # the entry point of eval / predict: rescored people, kept by OKS-NMS in the original's order. Its crops
    # are the original's (checked above to be OpenCV's warp within the stated bound), so that everything
    # after the warp is checked strictly on every build
    def original_crop(img, center, scale, rotation, out_size):
        (i,) = [j for j, c in enumerate(batch["center"]) if np.array_equal(c, center)]
        return ref_crops[i]

    monkeypatch.setattr(pose_decoding, "warp", original_crop)
    people = estimate_poses(model, image, boxes, cfg["data"], cfg["test"], flip_pairs, cfg["data"]["sigmas"])
    assert [p["index"] for p in people] == outputs["oks_nms_keep"].tolist()
    for p in people:
        _check_keypoints(p["keypoints"], outputs["keypoints"][p["index"]])
        assert abs(float(p["score"]) - float(outputs["rescored"][p["index"]])) <= SCORE_TOL


def test_pose_decoding_and_oks_nms_match_original(load_case):
    case = load_case("pose_decode")
    inputs, outputs = case["inputs"], case["outputs"]
    heatmaps = inputs["heatmaps"]
    centers, scales = inputs["centers"].numpy(), inputs["scales_200"].numpy() * np.float32(200.0)
    for method, key in (("default", "decoded_default"), ("unbiased", "decoded_unbiased")):
        coords, maxvals = decode_heatmaps(heatmaps, centers, scales, method, kernel=11)
        _check_keypoints(np.concatenate([coords, maxvals[..., None]], -1), outputs[key])
    image_ids = inputs["people_image_id"]
    images = list(dict.fromkeys(image_ids.tolist()))
    assert len(images) == len(outputs["oks_nms_keep"])
    for image_id, expected in zip(images, outputs["oks_nms_keep"]):
        rows = (image_ids == image_id).nonzero()[:, 0].tolist()
        people = [{"keypoints": inputs["people_keypoints"][r].numpy(), "area": float(inputs["people_area"][r]),
                   "score": float(inputs["people_score"][r])} for r in rows]
        assert oks_nms(people, 0.9, COCO_SIGMAS) == expected.tolist(), f"image {image_id}"


# --- detection: Mask R-CNN (mmdetection 2.11) ------------------------------------------------------------
@pytest.fixture(scope="module")
def case(load_case) -> dict:
    return load_case("det_maskrcnn")


@pytest.fixture(scope="module")
def model_and_cfg(case, tmp_path_factory):
    c, tb = case["config"], case["config"]["tiny_backbone"]
    checkpoint = tmp_path_factory.mktemp("det_ref") / "mask_rcnn.pth"
    torch.save({"meta": {"mmdet_version": "2.11.0"}, "state_dict": case["state_dict"]}, checkpoint)
    cfg = recipe("detection", {
        "model": {"backbone": {"name": "uniformer_small", "stage3": "hybrid" if tb["hybrid"] else "global",
                               "window_size": tb["window_size"], "drop_path_rate": tb["drop_path_rate"],
                               "kwargs": {"depths": tb["layers"], "embed_dims": tb["embed_dim"],
                                          "head_dim": tb["head_dim"]}},
                  "fpn_channels": c["fpn_channels"], "box_head_dim": c["box_head_dim"],
                  "mask_head_channels": c["mask_head_channels"], "checkpoint": str(checkpoint)},
        "data": {"classes": [f"class{i}" for i in range(c["num_classes"])], "test_scale": c["test_scale"],
                 "max_size": c["max_size"]}})
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield build("detection", cfg).eval(), cfg
    torch.set_num_threads(n)


def test_resize_matches_the_original_uint8_image(case):
    image = case["inputs"]["image"].numpy()
    resized, factor = det_resize_keep_ratio(image, (case["config"]["test_scale"], case["config"]["max_size"]))
    assert np.array_equal(resized, case["inputs"]["resized_uint8"].numpy())
    assert np.allclose(factor, case["inputs"]["scale_factor"].numpy(), rtol=0, atol=1e-7)


def test_anchors_match(case, model_and_cfg):
    model, _ = model_and_cfg
    gen = model.rpn.anchor_generator
    out = case["outputs"]
    for level, ref in enumerate(out["base_anchors"]):
        assert torch.allclose(gen.base_anchors(level), ref, rtol=0, atol=1e-4)
    anchors = gen([tuple(s) for s in out["featmap_sizes"]])
    assert torch.allclose(anchors[4], out["anchors_l4"], rtol=0, atol=1e-4)


def test_proposals_match(case, model_and_cfg):
    """Same 1000 proposals, same order except between proposals of equal score (tie order is the sort's)."""
    model, cfg = model_and_cfg
    resized = case["inputs"]["resized_uint8"]
    with torch.no_grad():
        x, sizes = model.batch([resized.permute(2, 0, 1).float()])
        proposals = model.rpn(list(model.backbone(x).values()), sizes)[0][0]
    ref = case["outputs"]["proposals"]
    assert proposals.shape == ref.shape
    assert torch.allclose(proposals[:, 4], ref[:, 4], rtol=0, atol=1e-5)
    iou = box_iou(proposals[:, :4], ref[:, :4])
    match = iou.argmax(1)
    assert (iou.max(1).values > 0.9999).all()
    assert torch.equal(match.sort().values, torch.arange(len(ref)))  # one-to-one
    moved = torch.nonzero(match != torch.arange(len(ref))).squeeze(1)
    assert len(moved) <= 8, moved
    assert ((ref[match, 4] - proposals[:, 4]).abs() <= 1e-5).all()  # only ties trade places
    assert (proposals[:, :4] - ref[match, :4]).abs().max() <= 1e-3


def test_final_detections_and_masks_match(case, model_and_cfg):
    model, cfg = model_and_cfg
    image = case["inputs"]["image"].numpy()
    out = detect(model, [image], scale=(cfg["data"]["test_scale"], cfg["data"]["max_size"]),
                 mask_thresh=cfg["test"]["mask_thresh"])[0]
    ref = case["outputs"]
    ref_boxes, ref_scores, ref_labels = ref["det_bboxes"][:, :4], ref["det_bboxes"][:, 4], ref["det_labels"]
    h, w = ref["masks_shape"][1:]
    ref_masks = np.unpackbits(ref["masks_packed"].numpy(), axis=1)[:, :h * w].reshape(-1, h, w).astype(bool)
    assert len(out["boxes"]) == len(ref_boxes) == 100
    iou = box_iou(out["boxes"], ref_boxes)
    match = iou.argmax(0)  # ours for each reference detection
    assert torch.equal(match.sort().values, torch.arange(len(ref_boxes))), "not one-to-one"
    assert (iou[match, torch.arange(len(ref_boxes))] >= 0.99).all()
    assert torch.equal(out["labels"][match] - 1, ref_labels)
    assert (out["boxes"][match] - ref_boxes).abs().max() <= 1e-3
    assert (out["scores"][match] - ref_scores).abs().max() <= 1e-4
    masks = out["masks"][match].numpy()
    assert masks.shape == ref_masks.shape
    identical = [bool(np.array_equal(a, b)) for a, b in zip(masks, ref_masks)]
    assert sum(identical) >= 98, sum(identical)
    for a, b, same in zip(masks, ref_masks, identical):
        assert same or (a & b).sum() >= 0.99 * (a | b).sum()
