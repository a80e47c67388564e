"""Resolving pretrained weights: a local file through the pretrained config, weight tags, offline errors."""
from __future__ import annotations

import huggingface_hub
import pytest
import timm
import torch

import uniformer
from uniformer import CheckpointError

TINY = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), head_dim=16, num_classes=10)


def test_pretrained_from_local_file_in_original_layout(tmp_path, monkeypatch, full_summary, materialize_state_dict):
    def no_hub(*args, **kwargs):
        raise AssertionError("the hub must not be asked when a file is given")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    # The full-size layout with seeded values (cheaper than initialising a second full model).
    _, shapes = full_summary("uniformer_small")
    sd = materialize_state_dict(shapes, seed=7)
    path = tmp_path / "uniformer_small_in1k.pth"
    torch.save({"model": sd, "epoch": 299}, path)

    torch.manual_seed(8)
    model = uniformer.create_model("uniformer_small.in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    own = model.state_dict()
    for k in ("patch_embed1.proj.weight", "blocks3.7.attn.qkv.weight", "blocks4.2.mlp.fc2.bias", "head.weight",
              "norm.running_var"):
        assert torch.equal(own[k], sd[k]), k
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert model.pretrained_cfg["tag"] == "in1k" and model.pretrained_cfg["file"] == str(path)


def test_pretrained_local_file_through_timm(make_tiny, tmp_path):
    src = make_tiny()
    path = tmp_path / "tiny.pth"
    torch.save({"model": src.state_dict()}, path)
    model = timm.create_model("uniformer_small.in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **TINY)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_token_labeling_weights_are_their_own_models():
    model = uniformer.create_model("uniformer_small_tl.in1k", depths=(1, 1, 1, 1))
    assert model.aux_head is not None
    assert {blk.attn.head_dim for blk in [*model.blocks3, *model.blocks4]} == {32}
    assert model.blocks3[0].attn.num_heads == 10
    plain = uniformer.create_model("uniformer_small.in1k", depths=(1, 1, 1, 1))
    assert plain.aux_head is None and plain.blocks3[0].attn.head_dim == 64
    large = uniformer.create_model("uniformer_large_ls_tl.in1k_384", depths=(1, 1, 1, 1))
    assert large.aux_head is not None and large.blocks3[0].attn.head_dim == 64
    assert large.pretrained_cfg["input_size"] == (3, 384, 384)
    # a tag selects weights only: the same name builds the same network whatever the tag
    assert uniformer.create_model("uniformer_small_tl.in1k_384", depths=(1, 1, 1, 1)).aux_head is not None


def test_explicit_arguments_override_the_model_defaults():
    model = uniformer.create_model("uniformer_small_tl.in1k", depths=(1, 1, 1, 1), head_dim=64)
    assert model.blocks3[0].attn.head_dim == 64 and model.aux_head is not None


def test_token_labeling_tag_loads_a_local_token_labeling_file(tmp_path):
    kwargs = dict(depths=(1, 1, 2, 1), embed_dims=(32, 64, 128, 256), num_classes=10)
    torch.manual_seed(0)
    src = uniformer.create_model("uniformer_small", head_dim=32, aux_head=True, **kwargs)
    path = tmp_path / "uniformer_small_tl_224.pth"
    torch.save({"model": src.state_dict()}, path)
    model = uniformer.create_model("uniformer_small_tl.in1k", pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()
    src.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


# (tag, hub file named by public code that downloads the released weights, classes, frames, stride, views)
VERIFIED_VIDEO_TAGS = [
    ("uniformer_video_small.k400_16x8", "uniformer_small_k400_16x8.pth", 400, 16, 8, (1, 4)),
    ("uniformer_video_small.k600_16x8", "uniformer_small_k600_16x8.pth", 600, 16, 8, (1, 4)),
    ("uniformer_video_base.k600_32x4", "uniformer_base_k600_32x4.pth", 600, 32, 4, (1, 4)),
    ("uniformer_video_base.sthv2_32", "uniformer_base_sthv2_32_prek600.pth", 174, 32, None, (3, 1)),
]


@pytest.mark.parametrize("tag,file,classes,frames,stride,views", VERIFIED_VIDEO_TAGS)
def test_verified_video_tags(tag, file, classes, frames, stride, views):
    from uniformer.models.released import released_weights

    cfg = uniformer.create_model(tag, depths=(1, 1, 1, 1)).pretrained_cfg
    assert (cfg["hf_hub_id"], cfg["hf_hub_filename"], cfg["num_classes"]) == ("Sense-X/uniformer_video", file, classes)
    weights = released_weights(tag)
    assert (weights.frames, weights.stride, (weights.crops, weights.clips)) == (frames, stride, views)
    assert weights.confirmed and f"frames={frames}" in cfg["notes"]
    data = weights.data_config()
    assert data["num_frames"] == frames and data["test_crops"] == views[0] and data["test_clips"] == views[1]
    assert data["sampling"] == ("dense" if stride else "uniform")


def test_verified_image_tags():
    for tag, file in (("uniformer_small.in1k", "uniformer_small_in1k.pth"),
                      ("uniformer_base.in1k", "uniformer_base_in1k.pth")):
        cfg = uniformer.create_model(tag, depths=(1, 1, 1, 1)).pretrained_cfg
        assert (cfg["hf_hub_id"], cfg["hf_hub_filename"]) == ("Sense-X/uniformer_image", file)


def test_no_tag_points_at_the_guessed_something_something_file():
    from uniformer.models.released import RELEASED_WEIGHTS

    assert not any(w.file.endswith("_sthv2_prek600.pth") for w in RELEASED_WEIGHTS.values())
    assert all(w.file.startswith("uniformer_") and w.file.endswith(".pth") for w in RELEASED_WEIGHTS.values())


def test_verified_video_tag_loads_original_layout_file(tmp_path, monkeypatch, full_summary, materialize_state_dict):
    """A full-size K400 file in the video training layout ({"model_state": ...}), through the tag's config."""
    def no_hub(*args, **kwargs):
        raise AssertionError("the hub must not be asked when a file is given")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    _, shapes = full_summary("uniformer_video_small", num_classes=400)
    sd = materialize_state_dict(shapes, seed=3)
    path = tmp_path / "uniformer_small_k400_16x8.pth"
    torch.save({"model_state": sd, "epoch": 110}, path)
    model = uniformer.create_model("uniformer_video_small.k400_16x8", pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(path)))
    assert model.head.out_features == 400
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def offline_download(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline mode is enabled and the file is not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline_download)


def test_offline_pretrained_explains_how_to_pass_a_file(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        uniformer.create_model("uniformer_small", pretrained=True, **TINY)
    msg = str(info.value)
    assert "uniformer_small.in1k" in msg
    assert "Sense-X/uniformer_image/uniformer_small_in1k.pth" in msg
    assert "LocalEntryNotFoundError" in msg
    assert "checkpoint_path=" in msg and "pretrained_cfg_overlay=dict(file=" in msg


def test_offline_pretrained_through_timm(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(CheckpointError, match="pretrained_cfg_overlay"):
        timm.create_model("uniformer_video_small.k400_8x8", pretrained=True, **TINY)


def test_variant_without_released_weights(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(CheckpointError, match="no released weights") as info:
        uniformer.create_model("uniformer_video_xxs", pretrained=True, depths=(1, 1, 2, 1),
                               embed_dims=(16, 32, 64, 128), head_dim=16)
    assert "checkpoint_path" in str(info.value)
