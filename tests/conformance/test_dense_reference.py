"""The segmentation and pose test pipelines reproduce the original UniFormer code's outputs.

Each case of `../shared/conformance/dense` (see its README) holds a tiny model's weights in the
original checkpoint layout, its settings, the uint8 inputs and the outputs of the original
mmsegmentation 0.13 / mmpose 0.16 pipelines. Every test builds the model through the package's
recipe, loads the weights through the package's loader of original checkpoints, and runs the
inference the package's `eval` / `predict` use, from the uint8 image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from uniformer.tasks import pose as P
from uniformer.tasks import segmentation as S
from uniformer.tasks.pose.decoding import (
    COCO_SIGMAS,
    decode_heatmaps,
    estimate_poses,
    oks_nms,
    person_crops,
    topdown_heatmaps,
    warp,
)
from uniformer.tasks.segmentation.data import resize_keep_ratio, scaled_size
from uniformer.tasks.segmentation.evaluation import infer_probs


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
    return S.load_config({
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
    model = S.build_model(cfg).eval()
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


def _pose_recipe(case: dict, checkpoint: str) -> dict:
    c, sd = case["config"], case["state_dict"]
    deconvs = sorted({int(k.split(".")[2]) for k in sd if k.startswith("keypoint_head.deconv_layers.")
                      and sd[k].ndim == 4})
    t = c["test_cfg"]
    return P.load_config({
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


def test_pose_topdown_matches_original(load_case, tmp_path):
    case = load_case("pose_topdown")
    inputs, outputs = case["inputs"], case["outputs"]
    cfg = _pose_recipe(case, _original_checkpoint(case, tmp_path / "pose.pth"))
    model = P.build_model(cfg).eval()
    image = inputs["image"].numpy()
    boxes = inputs["boxes_xywhs"].tolist()
    flip_pairs = cfg["data"]["flip_pairs"]
    # the crops: float32 centre / scale, OpenCV's warp, the normalised batch
    batch = person_crops(image, boxes, cfg["data"])
    assert np.array_equal(batch["center"], outputs["centers"].numpy())
    assert np.array_equal(batch["scale"], outputs["scales_200"].numpy() * np.float32(200.0))  # mmpose: scale * 200
    for i, (center, scale) in enumerate(zip(batch["center"], batch["scale"])):
        crop = warp(image, center, scale, 0.0, cfg["data"]["input_size"])
        assert np.array_equal(crop, inputs["crops_uint8"][i].numpy()), f"crop {i} differs"
    assert torch.allclose(batch["img"], inputs["batch_tensor"], atol=1e-6)
    # heatmaps with the flip test, and every person's decoded keypoints
    heat = topdown_heatmaps(model, batch["img"], flip_pairs, flip=True, shift=True)
    assert np.abs(heat - outputs["heatmaps_flip_avg"].numpy()).max() <= SCORE_TOL
    coords, maxvals = decode_heatmaps(heat, batch["center"], batch["scale"], "default")
    _check_keypoints(np.concatenate([coords, maxvals[..., None]], -1), outputs["keypoints"])
    # the entry point of eval / predict: rescored people, kept by OKS-NMS in the original's order
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
