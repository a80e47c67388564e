"""Checkpoint loading: every original on-disk layout, the project's safetensors, and misfits."""
from __future__ import annotations

import argparse
import json
import logging
import re

import pytest
import torch

import uniformer
from uniformer import CheckpointError
from uniformer.models.checkpoint import save_safetensors

VARIANTS = (
    "uniformer_small", "uniformer_small_plus", "uniformer_small_plus_dim64", "uniformer_base", "uniformer_base_ls",
    "uniformer_large_ls", "uniformer_video_small", "uniformer_video_base", "uniformer_xxs", "uniformer_xs",
    "uniformer_video_xxs", "uniformer_video_xs",
    "uniformer_small_tl", "uniformer_small_plus_tl", "uniformer_base_tl", "uniformer_large_ls_tl",
)


def _assert_same_weights(model, state_dict, skip=()):
    own = model.state_dict()
    for k, v in state_dict.items():
        if k.startswith(tuple(skip)):
            continue
        assert torch.equal(own[k], v), k


def _fresh(name="uniformer_small", seed=99, **kwargs):
    """A differently seeded tiny twin, so that a load that does nothing is noticed."""
    torch.manual_seed(seed)
    return uniformer.create_model(name, **{**dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), head_dim=16,
                                                  num_classes=10), **kwargs}).eval()


# --- layouts ---------------------------------------------------------------------------------
def test_bare_state_dict(make_tiny, tmp_path):
    src = make_tiny()
    path = tmp_path / "bare.pth"
    torch.save(src.state_dict(), path)
    model = uniformer.create_model("uniformer_small", **dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128),
                                                             head_dim=16, num_classes=10), checkpoint_path=path).eval()
    _assert_same_weights(model, src.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_image_training_script_layout(make_tiny, tmp_path):
    src = make_tiny()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": src.state_dict(), "epoch": 299, "optimizer": {"lr": 1e-3},
                "args": argparse.Namespace(model="uniformer_small", lr=1e-3)}, path)
    model = _fresh()
    info = uniformer.load_checkpoint(model, path)
    assert info["model"] == "uniformer_small" and info["wrapper"] == "model"
    _assert_same_weights(model, src.state_dict())


def test_video_training_script_layout(make_tiny, tmp_path):
    src = make_tiny("uniformer_video_small")
    path = tmp_path / "video.pyth"
    torch.save({"epoch": 110, "model_state": src.state_dict(), "cfg": "MODEL:\n  ARCH: uniformer\n"}, path)
    model = _fresh("uniformer_video_small")
    info = uniformer.load_checkpoint(model, path)
    assert info["wrapper"] == "model_state" and "ARCH: uniformer" in info["cfg"]
    _assert_same_weights(model, src.state_dict())  # 3-D weights load as they are, no inflation
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_toolbox_layout_into_features_only(make_tiny, tmp_path):
    src = make_tiny(features_only=True, num_classes=0, stage3="hybrid", window_size=2)
    sd = {"backbone." + k: v for k, v in src.state_dict().items()}
    sd["neck.lateral.weight"] = torch.zeros(3)
    sd["decode_head.conv_seg.bias"] = torch.zeros(3)
    path = tmp_path / "det.pth"
    torch.save({"meta": {"epoch": 12, "CLASSES": ("person", "car")}, "state_dict": sd}, path)
    model = _fresh(features_only=True, num_classes=0, stage3="hybrid", window_size=2)
    info = uniformer.load_checkpoint(model, path)
    assert info["toolbox_heads"] == ["decode_head", "neck"]
    _assert_same_weights(model, src.state_dict())  # norm1..norm4 included
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        for a, b in zip(model(x), src(x)):
            assert torch.equal(a, b)


def test_ddp_module_prefix(make_tiny, tmp_path):
    src = make_tiny()
    path = tmp_path / "ddp.pth"
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    model = _fresh()
    uniformer.load_checkpoint(model, path)
    _assert_same_weights(model, src.state_dict())


def test_checkpoint_without_num_batches_tracked(make_tiny, tmp_path):
    src = make_tiny()
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    model = _fresh()
    uniformer.load_checkpoint(model, path)
    _assert_same_weights(model, sd)


def test_own_safetensors(make_tiny, tmp_path):
    src = make_tiny(aux_head=True)
    path = tmp_path / "weights.safetensors"
    config = dict(depths=[1, 1, 2, 1], embed_dims=[16, 32, 64, 128], head_dim=16, num_classes=10, aux_head=True)
    save_safetensors(src, path, "uniformer_small", config)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["model"] == "uniformer_small" and json.loads(meta["config"]) == config
    model = uniformer.create_model("uniformer_small", checkpoint_path=path, **config).eval()
    _assert_same_weights(model, src.state_dict())
    info = uniformer.load_checkpoint(_fresh(aux_head=True), path)
    assert info["model"] == "uniformer_small" and json.loads(info["config"]) == config


def test_light_model_round_trip(make_tiny, tmp_path):
    src = make_tiny("uniformer_xxs")
    path = tmp_path / "xxs.pth"
    torch.save({"model": src.state_dict()}, path)
    model = _fresh("uniformer_xxs", depths=(1, 1, 3, 2))
    uniformer.load_checkpoint(model, path)
    _assert_same_weights(model, src.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_other_class_count_drops_the_classifier_with_a_warning(make_tiny, tmp_path, caplog):
    src = make_tiny(num_classes=1000, aux_head=True)
    path = tmp_path / "in1k.pth"
    torch.save({"model": src.state_dict()}, path)
    model = _fresh(num_classes=7, aux_head=True)
    head_before = model.head.weight.clone()
    with caplog.at_level(logging.WARNING, logger="uniformer"):
        uniformer.load_checkpoint(model, path)
    text = caplog.text
    assert "dropping the checkpoint's classifier head (1000 classes; the model has 7)" in text
    assert "aux_head" in text
    assert torch.equal(model.head.weight, head_before)
    _assert_same_weights(model, src.state_dict(), skip=("head.", "aux_head."))


def test_classifier_into_headless_model(make_tiny, tmp_path):
    """num_classes=0 (timm's feature-extractor convention): the checkpoint's classifier has no place and
    is dropped; everything else loads."""
    src = make_tiny()
    path = tmp_path / "cls.pth"
    torch.save({"model": src.state_dict()}, path)
    model = _fresh(num_classes=0)
    uniformer.load_checkpoint(model, path)
    _assert_same_weights(model, src.state_dict(), skip=("head.",))


def test_classification_checkpoint_into_features_only(make_tiny, tmp_path):
    src = make_tiny(num_classes=1000)
    path = tmp_path / "in1k.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(model="uniformer_small")}, path)
    model = _fresh(features_only=True, num_classes=0)
    norms_before = {k: v.clone() for k, v in model.state_dict().items() if re.match(r"norm[1-4]\.", k)}
    assert len(norms_before) == 8
    uniformer.load_checkpoint(model, path)
    own = model.state_dict()
    for k, v in norms_before.items():
        assert torch.equal(own[k], v), k
    assert "head.weight" not in own and "norm.weight" not in own
    _assert_same_weights(model, src.state_dict(), skip=("head.", "norm."))


def test_no_state_dict_in_file(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 3, "model": {}}, path)
    with pytest.raises(CheckpointError, match="no state dict found") as info:
        uniformer.load_checkpoint(_fresh(), path)
    assert str(path) in str(info.value)


def test_tiny_misfit_lists_missing_and_unexpected(make_tiny, tmp_path):
    src = make_tiny(depths=(1, 1, 3, 1))
    path = tmp_path / "deeper.pth"
    torch.save(src.state_dict(), path)
    model = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        uniformer.load_checkpoint(model, path)
    msg = str(info.value)
    assert str(path) in msg
    n = len([k for k in src.state_dict() if k.startswith("blocks3.2.")])
    assert f"unexpected keys: {n} (blocks3.2." in msg
    assert "missing keys" not in msg
    for k, v in model.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k]), k


# --- full-size misfits ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_small():
    torch.manual_seed(0)
    return uniformer.create_model("uniformer_small")


def _write_full(full_summary, tmp_path, name, wrap=None, **kwargs):
    _, shapes = full_summary(name, **kwargs)
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    path = tmp_path / f"{name}.pth"
    torch.save(wrap(sd) if wrap else sd, path)
    return path, sd


def _count(msg: str, what: str) -> int:
    found = re.search(rf"{what} keys: (\d+)", msg)
    assert found, msg
    return int(found.group(1))


@pytest.mark.parametrize("source", ["uniformer_small_plus", "uniformer_base"])
def test_full_misfit_names_path_counts_and_variant(full_small, full_summary, tmp_path, source):
    path, sd = _write_full(full_summary, tmp_path, source, wrap=lambda sd: {"model": sd})
    own = full_small.state_dict()
    with pytest.raises(CheckpointError) as info:
        uniformer.load_checkpoint(full_small, path)
    msg = str(info.value)
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own and not k.endswith("num_batches_tracked")]
    assert str(path) in msg
    assert "uniformer_small" in msg.splitlines()[0]
    if missing:
        assert _count(msg, "missing") == len(missing)
    else:
        assert "missing keys" not in msg
    assert _count(msg, "unexpected") == len(unexpected)
    assert f"looks like {source}" in msg
    if source == "uniformer_small_plus":
        assert missing and "uniformer_small_plus_dim64" in msg  # S+ is ambiguous in head_dim


def test_video_weights_into_image_model(full_small, full_summary, tmp_path):
    path, _ = _write_full(full_summary, tmp_path, "uniformer_video_small", num_classes=400,
                          wrap=lambda sd: {"model_state": sd, "cfg": "MODEL:\n  ARCH: uniformer\n"})
    with pytest.raises(CheckpointError) as info:
        uniformer.load_checkpoint(full_small, path)
    msg = str(info.value)
    assert str(path) in msg and "shape mismatches" in msg
    assert "uniformer_video_small" in msg


def test_token_labeling_checkpoint_into_plain_model(full_small, full_summary, tmp_path):
    path, _ = _write_full(full_summary, tmp_path, "uniformer_small", aux_head=True, head_dim=32,
                          wrap=lambda sd: {"model": sd})
    with pytest.raises(CheckpointError) as info:
        uniformer.load_checkpoint(full_small, path)
    msg = str(info.value)
    assert _count(msg, "unexpected") == 2 and "aux_head.weight" in msg
    assert "token-labeling" in msg and "aux_head=True" in msg and "head_dim=32" in msg


# --- recognising variants ----------------------------------------------------------------------
def _named(text: str) -> set[str]:
    return {n for n in VARIANTS if re.search(rf"\b{n}\b", text)}


@pytest.mark.parametrize("name", VARIANTS)
def test_identify_variant(full_summary, name):
    _, shapes = full_summary(name)
    text = uniformer.identify_variant(shapes)
    if name in ("uniformer_small_plus", "uniformer_small_plus_dim64"):
        assert _named(text) == {"uniformer_small_plus", "uniformer_small_plus_dim64"}
        assert "head_dim" in text
    else:
        assert _named(text) == {name}, text


def test_identify_variant_notes(full_summary):
    _, dense = full_summary("uniformer_small", features_only=True)
    assert "features_only=True" in uniformer.identify_variant(dense)
    _, tl = full_summary("uniformer_large_ls", aux_head=True)
    text = uniformer.identify_variant(tl)
    assert _named(text) == {"uniformer_large_ls_tl"} and "aux_head=True" in text and "head_dim" not in text
    _, small_tl = full_summary("uniformer_small", aux_head=True, head_dim=32)
    text = uniformer.identify_variant(small_tl)
    assert _named(text) == {"uniformer_small_tl"} and "head_dim=32" in text
    _, ls = full_summary("uniformer_video_xxs", layer_scale=True)
    assert "layer_scale=True" in uniformer.identify_variant(ls)
    _, base = full_summary("uniformer_base")
    assert "named in the checkpoint" in uniformer.identify_variant(base, {"model": "uniformer_base"})
    assert "head_dim=32 per its config" in uniformer.identify_variant(base, {"cfg": "MODEL:\n  HEAD_DIM: 32\n"})


def test_identify_unknown_layout(make_tiny):
    text = uniformer.identify_variant(make_tiny().state_dict())
    assert "unknown UniFormer layout" in text and "(1, 1, 2, 1)" in text and _named(text) == set()
