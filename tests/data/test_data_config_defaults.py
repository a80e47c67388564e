"""Size defaults follow input_size, and a resolved data section (what a run's config.yaml records) holds every key."""
from __future__ import annotations

import warnings

import pytest

from uniformer.data import parse_data_config, resolved_data_config
from uniformer.data.config import DataConfig


def test_scale_jitter_default_follows_input_size():
    # a 64-pixel recipe without scale_jitter used to jitter the short side in 256-320 (64-pixel crops of large
    # upscales, a model stuck at chance): the default is now input_size x [256, 320] / 224
    small = parse_data_config({"format": "image_list", "input_size": 64, "random_resized_crop": False})
    assert small.scale_jitter == (73, 91) and small.short_side == 73
    assert parse_data_config({"format": "video_list"}).scale_jitter == (256, 320)
    assert parse_data_config({"format": "video_list", "scale_jitter": [64, 80]}).scale_jitter == (64, 80)


def test_resolved_section_holds_every_key_and_parses_to_the_same_settings():
    given = {"format": "video_list", "input_size": 64, "num_sample": 2, "mixup": 0.8}
    resolved = resolved_data_config(given)
    fields = set(DataConfig.__dataclass_fields__) - {"extra", "frame_template"}
    assert fields <= set(resolved) and "frame_template" not in resolved  # a frame_folder key only
    assert resolved["scale_jitter"] == [73, 91] and resolved["label_smoothing"] == 0.1 and resolved["cutmix"] == 0.0
    assert parse_data_config(resolved) == parse_data_config(given)
    assert resolved_data_config(resolved) == resolved


def test_the_flip_warning_is_for_something_something_layouts_only():
    """Flipping corrupts Something-Something's left/right labels; HMDB51 frame folders (dense sampling) flip as
    the original did, without a warning."""
    with pytest.warns(UserWarning, match="Something-Something labels depend on left/right"):
        parse_data_config({"format": "frame_folder", "hflip": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_data_config({"format": "frame_folder", "sampling": "dense", "hflip": True}).hflip
