"""Cascade Mask R-CNN on UniFormer: the original experiment's heads, original checkpoints, training, inference."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dense_helpers import TINY_BACKBONE, build, recipe, save_original_checkpoint, seeded, train

from uniformer.models.checkpoint import CheckpointError
from uniformer.tasks import CONFIGS
from uniformer.tasks import detection as D
from uniformer.tasks.dense.synthetic import write_shapes_coco
from uniformer.tasks.detection.cascade import CascadeRoIHeads, ConvFCBoxHead, FCNMaskHead
from uniformer.tasks.detection.data import DetDataset, det_collate

RECIPE = CONFIGS / "detection" / "cascade_mask_rcnn_uniformer_small_h14_3x_ms_coco.yaml"




@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_coco(tmp_path_factory.mktemp("cascade") / "shapes", n_train=6, n_val=2, size=(96, 96))


def _update(cfg: dict, new: dict) -> dict:
    for k, v in new.items():
        cfg[k] = _update(cfg[k], v) if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def tiny_cascade_cfg(root: Path) -> dict:
    """The Cascade recipe with a tiny backbone, narrow heads and the synthetic shapes."""
    return recipe("detection", _update(recipe("detection", RECIPE), {
        "model": {"backbone": {**TINY_BACKBONE, "window_size": 4}, "fpn_channels": 32, "box_head_dim": 64,
                  "mask_head_channels": [16, 16], "anchor_sizes": [16, 32, 64, 128, 256], "rpn_batch": 64,
                  "roi_batch": 64},
        "data": {"root": str(root), "train": {"annotations": "annotations/instances_train.json", "images": "train"},
                 "val": {"annotations": "annotations/instances_val.json", "images": "val"},
                 "train_scales": [96], "test_scale": 96, "max_size": 96, "crop_policy": None},
        "train": {"epochs": None, "iters": 6, "batch_size": 2, "num_workers": 0, "log_every": 1},
        "checkpoint": {"every": 6},
        "optim": {"lr": 1e-3},
        "sched": {"name": "constant", "warmup_iters": 0},
    }))


def test_recipe_builds_the_original_experiment():
    """cascade_mask_rcnn_3x_ms_hybrid_small: 79M parameters as the paper counts, heads as the config says."""
    from uniformer.profiling import count_params

    cfg = recipe("detection", RECIPE)
    cfg["data"]["classes"] = [str(i) for i in range(80)]
    model = build("detection", cfg)
    roi = model.roi_heads
    assert isinstance(roi, CascadeRoIHeads) and len(roi.box_heads) == len(roi.mask_heads) == 3
    assert roi.stage_ious == [0.5, 0.6, 0.7] and roi.stage_loss_weights == [1.0, 0.5, 0.25]
    assert roi.stage_stds == [(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)]
    assert roi.box_loss == "giou" and roi.giou_weight == 10.0
    assert [s.low_quality for s in roi.sampling] == [False] * 3 and roi.sampling[0].batch_size_per_image == 512
    head = roi.box_heads[0]
    assert isinstance(head, ConvFCBoxHead) and len(head.shared_convs) == 4 and len(head.shared_fcs) == 1
    assert head.shared_convs[0].conv.bias is None and isinstance(head.shared_convs[0].bn, torch.nn.BatchNorm2d)
    assert head.shared_fcs[0].in_features == 256 * 7 * 7 and head.shared_fcs[0].out_features == 1024
    assert head.fc_cls.out_features == 81 and head.fc_reg.out_features == 320  # class-specific regression
    assert isinstance(roi.mask_heads[2], FCNMaskHead) and len(roi.mask_heads[2].convs) == 4
    assert model.rpn.box_loss == "smooth_l1" and model.rpn.allowed_border == 0
    assert model.rpn._post_nms_top_n == {"training": 2000, "testing": 1000}
    assert count_params(model.backbone.body) == 21_033_280
    assert 78.5e6 < count_params(model) < 79.5e6
    base = recipe("detection", CONFIGS / "detection" / "cascade_mask_rcnn_uniformer_base_h14_3x_ms_coco.yaml")
    assert base["model"]["type"] == "cascade_mask_rcnn" and base["model"]["backbone"]["name"] == "uniformer_base"
    assert base["model"]["backbone"]["drop_path_rate"] == 0.4 and base["train"]["epochs"] == 36


def _original_cascade_state(backbone: dict, fpn: int, classes: int, mask_channels: list[int], fc: int,
                            in_channels: list[int]) -> dict:
    """Random tensors under the original mmdet Cascade Mask R-CNN names and shapes (written from its config)."""
    g = torch.Generator().manual_seed(5)

    def t(*shape):
        return torch.randn(*shape, generator=g)

    sd = {f"backbone.{k}": v for k, v in backbone.items()}
    for i, c in enumerate(in_channels):
        sd[f"neck.lateral_convs.{i}.conv.weight"], sd[f"neck.lateral_convs.{i}.conv.bias"] = t(fpn, c, 1, 1), t(fpn)
        sd[f"neck.fpn_convs.{i}.conv.weight"], sd[f"neck.fpn_convs.{i}.conv.bias"] = t(fpn, fpn, 3, 3), t(fpn)
    sd.update({"rpn_head.rpn_conv.weight": t(fpn, fpn, 3, 3), "rpn_head.rpn_conv.bias": t(fpn),
               "rpn_head.rpn_cls.weight": t(3, fpn, 1, 1), "rpn_head.rpn_cls.bias": t(3),
               "rpn_head.rpn_reg.weight": t(12, fpn, 1, 1), "rpn_head.rpn_reg.bias": t(12)})
    for s in range(3):
        p = f"roi_head.bbox_head.{s}."
        for j in range(4):
            sd[f"{p}shared_convs.{j}.conv.weight"] = t(fpn, fpn, 3, 3)
            for name in ("weight", "bias", "running_mean"):
                sd[f"{p}shared_convs.{j}.bn.{name}"] = t(fpn)
            sd[f"{p}shared_convs.{j}.bn.running_var"] = t(fpn).abs() + 0.5
            sd[f"{p}shared_convs.{j}.bn.num_batches_tracked"] = torch.tensor(100 + j)
        sd.update({f"{p}shared_fcs.0.weight": t(fc, fpn * 49), f"{p}shared_fcs.0.bias": t(fc),
                   f"{p}fc_cls.weight": t(classes + 1, fc), f"{p}fc_cls.bias": t(classes + 1),
                   f"{p}fc_reg.weight": t(4 * classes, fc), f"{p}fc_reg.bias": t(4 * classes)})
        p = f"roi_head.mask_head.{s}."
        for j, c in enumerate(mask_channels):
            sd[f"{p}convs.{j}.conv.weight"] = t(c, fpn if j == 0 else mask_channels[j - 1], 3, 3)
            sd[f"{p}convs.{j}.conv.bias"] = t(c)
        c = mask_channels[-1]
        sd.update({f"{p}upsample.weight": t(c, c, 2, 2), f"{p}upsample.bias": t(c),
                   f"{p}conv_logits.weight": t(classes, c, 1, 1), f"{p}conv_logits.bias": t(classes)})
    return sd


def test_original_cascade_checkpoint_loads(shapes, tmp_path):
    seeded(0)
    cfg = tiny_cascade_cfg(shapes)
    body = build("detection", cfg).backbone.body
    backbone = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in body.state_dict().items()}
    state = _original_cascade_state(backbone, fpn=32, classes=3, mask_channels=[16, 16], fc=64,
                                    in_channels=TINY_BACKBONE["kwargs"]["embed_dims"])
    sections: dict[str, dict] = {}
    for k, v in state.items():
        prefix, rest = k.split(".", 1)
        sections.setdefault(prefix, {})[rest] = v
    path = save_original_checkpoint(tmp_path / "cascade_mask_rcnn.pth", sections)
    cfg["model"]["checkpoint"] = str(path)
    model = build("detection", cfg)
    mine = model.state_dict()
    renames = {"neck.lateral_convs.": "backbone.fpn.inner_blocks.", "neck.fpn_convs.": "backbone.fpn.layer_blocks.",
               "rpn_head.rpn_conv.": "rpn.head.conv.0.0.", "rpn_head.rpn_cls.": "rpn.head.cls_logits.",
               "rpn_head.rpn_reg.": "rpn.head.bbox_pred.", "roi_head.bbox_head.": "roi_heads.box_heads.",
               "roi_head.mask_head.": "roi_heads.mask_heads.", "backbone.": "backbone.body."}
    landed = 0
    for key, value in state.items():
        name = key
        for old, new in renames.items():
            if key.startswith(old):
                name = new + key[len(old):]
                break
        name = name.replace(".conv.weight", ".0.weight").replace(".conv.bias", ".0.bias") \
            if name.startswith("backbone.fpn.") else name
        assert torch.equal(mine[name], value), key
        landed += 1
    assert landed == len(state)
    assert len([k for k in mine if not k.startswith("backbone.body.")]) == len(
        [k for k in state if not k.startswith("backbone.")])
    # a Mask R-CNN checkpoint does not fit: the error names what is missing
    cfg_bad = tiny_cascade_cfg(shapes)
    cfg_bad["model"].update(type="mask_rcnn", box_loss=None, rpn_box_loss=None, rpn_allowed_border=None,
                            checkpoint=str(path))
    with pytest.raises(CheckpointError, match="missing"):
        build("detection", cfg_bad)


def test_cascade_gradients_reach_every_head_and_it_trains(shapes, tmp_path):
    seeded(0)
    cfg = tiny_cascade_cfg(shapes)
    ds = DetDataset(cfg, "train")
    model = build("detection", cfg, num_classes=len(ds.cat_ids)).train()
    images, targets = det_collate([ds[0], ds[1]])
    losses = model(images, targets)
    assert {f"{k}_s{s}" for s in range(3) for k in ("loss_classifier", "loss_box_reg", "loss_mask")} | {
        "loss_objectness", "loss_rpn_box_reg"} == set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if name.startswith(("rpn.", "roi_heads.")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    summary = train("detection", cfg, tmp_path, show_progress=False)
    history = [h["loss"] for h in summary["history"]]
    assert all(np.isfinite(history)) and len(history) == 6
    assert {f"loss_classifier_s{s}" for s in range(3)} <= set(summary["history"][0])  # every stage trains
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= m["val_bbox_AP"] <= 1.0 and 0.0 <= m["val_segm_AP"] <= 1.0


def test_cascade_detects_in_image_coordinates(shapes):
    seeded(1)
    cfg = tiny_cascade_cfg(shapes)
    cfg["test"]["score_thresh"] = 0.0
    model = build("detection", cfg).eval()
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)  # resized 64x96
    out = D._detect(model, [image], cfg)[0]
    assert 0 < len(out["boxes"]) <= 100 and out["masks"].shape == (len(out["boxes"]), 60, 90)
    assert (out["boxes"][:, 0::2] <= 90 + 1e-3).all() and (out["boxes"][:, 1::2] <= 60 + 1e-3).all()
    assert (out["scores"][:-1] >= out["scores"][1:]).all() and set(out["labels"].tolist()) <= {1, 2, 3}


def test_cascade_scores_average_the_stages_logits(shapes):
    """With identical stages and no regression the cascade's scores equal one stage's softmax."""
    seeded(2)
    cfg = tiny_cascade_cfg(shapes)
    model = build("detection", cfg).eval()
    roi = model.roi_heads
    with torch.no_grad():
        for head in roi.box_heads:
            head.fc_reg.weight.zero_()
            head.fc_reg.bias.zero_()
        feats = [torch.randn(1, 32, 24 // 2 ** i, 24 // 2 ** i) for i in range(4)]
        proposals = [torch.tensor([[10.0, 12.0, 40.0, 50.0], [30.0, 5.0, 80.0, 60.0]])]
        stage_logits = [roi.box_forward(s, feats, torch.cat([torch.zeros(2, 1), proposals[0]], 1))[0]
                        for s in range(3)]
        roi.score_thresh = 0.0
        out = roi.predict(feats, proposals, [(96, 96)], [torch.ones(4)])[0]
    expected = torch.softmax(sum(stage_logits) / 3, -1)[:, :3]
    for box, score, label in zip(out["boxes"], out["scores"], out["labels"]):
        row = int((box - proposals[0]).abs().sum(1).argmin())
        assert torch.allclose(score, expected[row, label - 1], atol=1e-6)
