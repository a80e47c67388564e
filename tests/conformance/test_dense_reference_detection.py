"""The detection pipeline against the original mmdetection 2.11 Mask R-CNN's outputs (`det_maskrcnn.pt`).

The case holds a tiny UniFormer Mask R-CNN's weights in the original checkpoint layout, an RGB uint8 image
and what the original code produced from it. Here the package's own recipe builder makes the model, its
loader for original checkpoints loads the weights, and its inference entry point (`model.detect`, what
`uniformer eval` and `uniformer predict` run) detects from the uint8 image. The case files live in
`shared/conformance/dense/` next to (or above) the repository, or in $UNIFORMER_CONFORMANCE_DIR.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from uniformer.tasks import detection as D
from uniformer.tasks.detection.data import resize_keep_ratio
from uniformer.tasks.detection.model import detect


def _case_path(name: str) -> Path | None:
    env = os.environ.get("UNIFORMER_CONFORMANCE_DIR")
    if env:
        return Path(env) / name if (Path(env) / name).is_file() else None
    for parent in Path(__file__).resolve().parents:
        path = parent / "shared" / "conformance" / "dense" / name
        if path.is_file():
            return path
    return None


@pytest.fixture(scope="module")
def case() -> dict:
    path = _case_path("det_maskrcnn.pt")
    if path is None:
        pytest.skip("det_maskrcnn.pt not found (set UNIFORMER_CONFORMANCE_DIR to the folder of the reference cases)")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def model_and_cfg(case, tmp_path_factory):
    c, tb = case["config"], case["config"]["tiny_backbone"]
    checkpoint = tmp_path_factory.mktemp("det_ref") / "mask_rcnn.pth"
    torch.save({"meta": {"mmdet_version": "2.11.0"}, "state_dict": case["state_dict"]}, checkpoint)
    cfg = D.load_config({
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
    yield D.build_model(cfg).eval(), cfg
    torch.set_num_threads(n)


def test_resize_matches_the_original_uint8_image(case):
    image = case["inputs"]["image"].numpy()
    resized, factor = resize_keep_ratio(image, (case["config"]["test_scale"], case["config"]["max_size"]))
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
