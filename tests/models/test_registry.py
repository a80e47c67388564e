"""Registry, the public creation API, exact parameter counts and the timm model API."""
from __future__ import annotations

import pytest
import timm
import torch

import uniformer
from uniformer.models import UniFormer, UniFormerLight

VARIANTS = (
    "uniformer_small", "uniformer_small_plus", "uniformer_small_plus_dim64", "uniformer_base", "uniformer_base_ls",
    "uniformer_large_ls", "uniformer_video_small", "uniformer_video_base", "uniformer_xxs", "uniformer_xs",
    "uniformer_video_xxs", "uniformer_video_xs",
    "uniformer_small_tl", "uniformer_small_plus_tl", "uniformer_base_tl", "uniformer_large_ls_tl",
)


def test_list_models_has_all_sixteen_variants():
    names = uniformer.list_models()
    assert sorted(names) == sorted(VARIANTS)
    assert len(names) == 16


def test_pretrained_tags_are_listed():
    tagged = uniformer.list_models(pretrained=True)
    for expected in ("uniformer_small.in1k", "uniformer_small_tl.in1k", "uniformer_large_ls_tl.in1k_384",
                     "uniformer_video_small.k400_8x8", "uniformer_video_small.k400_16x8", "uniformer_xxs.in1k_128"):
        assert expected in tagged
    assert all(t.split(".")[0] in VARIANTS for t in tagged)


def test_timm_create_model_after_import(tiny_kwargs, tiny_light_kwargs):
    model = timm.create_model("uniformer_small", **tiny_kwargs)
    assert isinstance(model, UniFormer)
    assert model.pretrained_cfg["architecture"] == "uniformer_small"
    assert model.head.out_features == 10
    light = timm.create_model("uniformer_xxs", **tiny_light_kwargs)
    assert isinstance(light, UniFormerLight)


def test_unknown_name_is_a_clear_value_error():
    with pytest.raises(ValueError, match="unknown model 'uniformer_tiny'") as info:
        uniformer.create_model("uniformer_tiny")
    assert "uniformer_small" in str(info.value)  # it lists the valid choices


def test_unknown_name_with_tag_is_a_value_error():
    with pytest.raises(ValueError, match="unknown model"):
        uniformer.create_model("resnet50.a1_in1k")


def test_light_models_refuse_features_only():
    with pytest.raises(ValueError, match="features_only"):
        uniformer.create_model("uniformer_xxs", features_only=True)


@pytest.mark.parametrize("name, kwargs, expected", [
    ("uniformer_small", {}, 21_545_256),
    ("uniformer_small_plus", {}, 24_032_552),
    ("uniformer_small_plus_dim64", {}, 24_032_552),
    ("uniformer_base", {}, 49_776_552),
    ("uniformer_base_ls", {}, 49_796_520),
    ("uniformer_large_ls", dict(aux_head=True), 100_103_888),
    ("uniformer_video_small", dict(num_classes=400), 21_400_400),
    ("uniformer_video_base", dict(num_classes=400), 49_813_200),
    ("uniformer_small", dict(features_only=True), 21_033_280),
    ("uniformer_base", dict(features_only=True), 49_264_576),
])
def test_exact_parameter_counts(full_summary, name, kwargs, expected):
    count, _ = full_summary(name, **kwargs)
    assert count == expected


@pytest.mark.parametrize("name, approx", [("uniformer_xxs", 10.2e6), ("uniformer_xs", 16.5e6)])
def test_light_parameter_counts(full_summary, name, approx):
    count, _ = full_summary(name)
    assert abs(count - approx) <= 0.01 * approx


def test_small_plus_variants_differ_only_in_head_dim():
    a = uniformer.create_model("uniformer_small_plus", depths=(1, 1, 1, 1))
    b = uniformer.create_model("uniformer_small_plus_dim64", depths=(1, 1, 1, 1))
    assert a.blocks3[0].attn.head_dim == 32 and a.blocks3[0].attn.num_heads == 10
    assert b.blocks3[0].attn.head_dim == 64 and b.blocks3[0].attn.num_heads == 5
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


# --- timm model API ----------------------------------------------------------------------------
def test_features_only_out_indices_through_timm(tiny_kwargs):
    tiny_kwargs.pop("num_classes")
    torch.manual_seed(0)
    model = timm.create_model("uniformer_small", features_only=True, out_indices=(1, 3), **tiny_kwargs).eval()
    assert model.feature_info.channels() == [32, 128]
    assert model.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        maps = model(torch.randn(2, 3, 64, 96))
    assert len(maps) == 2
    for fmap, channels, reduction in zip(maps, model.feature_info.channels(), model.feature_info.reduction()):
        assert fmap.shape == (2, channels, 64 // reduction, 96 // reduction)
    # Each map goes through its stage LayerNorm: zero mean over channels at every position.
    assert torch.allclose(maps[0].mean(1), torch.zeros(()), atol=1e-5)


def test_features_only_has_no_classifier(tiny_kwargs):
    model = uniformer.create_model("uniformer_small", features_only=True, **tiny_kwargs)
    assert not hasattr(model, "head")
    with pytest.raises(RuntimeError):
        model.reset_classifier(5)


def test_forward_features_head_and_reset_classifier(make_tiny):
    model = make_tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 128, 2, 2)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, 128)
        assert torch.allclose(pooled, feats.mean((2, 3)), atol=1e-6)
        logits = model.forward_head(feats)
        assert torch.allclose(logits, model.head(pooled), atol=1e-6)
        assert torch.allclose(model(x), logits, atol=1e-6)
        model.reset_classifier(5)
        assert model.num_classes == 5
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, 128)
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == (2, 128, 2, 2)


def test_aux_head_reset_and_token_labeling_logits(make_tiny):
    model = make_tiny(aux_head=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        tokens = feats.flatten(2).transpose(1, 2)
        expected = model.head(tokens.mean(1)) + 0.5 * model.aux_head(tokens).amax(1)
        assert torch.allclose(model(x), expected, atol=1e-5)
        model.reset_classifier(7)
    assert model.aux_head.out_features == 7
    assert model(x).shape == (2, 7)


def test_light_model_api(make_tiny):
    model = make_tiny("uniformer_xxs")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        cls, feats = model.forward_features(x)
        assert cls.shape == (1, 1, 128) and feats.shape == (1, 128, 2, 2)
        assert model.forward_head(feats, pre_logits=True).shape == (1, 128)
        model.reset_classifier(5)
        assert model(x).shape == (1, 5)
    assert model.head_cls.out_features == 5


def test_video_model_through_timm(tiny_kwargs):
    torch.manual_seed(0)
    model = timm.create_model("uniformer_video_small", **tiny_kwargs).eval()
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 128, 2, 2, 2)  # time halved by the first embedding
        assert model(x).shape == (1, 10)
        assert model.forward_head(feats, pre_logits=True).shape == (1, 128)


def test_group_matcher_and_no_weight_decay(make_tiny):
    model = make_tiny()
    groups = model.group_matcher()
    assert "stem" in groups and "blocks" in groups
    assert make_tiny("uniformer_xxs").no_weight_decay() == {"cls_token"}


def test_meta_device_counts_match_a_real_model(full_summary):
    """The exact counts above are taken on the meta device; one real model confirms they agree."""
    model = uniformer.create_model("uniformer_small")
    count, shapes = full_summary("uniformer_small")
    assert sum(p.numel() for p in model.parameters()) == count
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in shapes.items()}
