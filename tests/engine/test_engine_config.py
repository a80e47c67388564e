"""Recipes: defaults, `base:` inheritance, `--set` overrides, errors naming the culprit, the shipped configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from uniformer.engine.config import ConfigError, apply_overrides, default_config, load_config, parse_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {name: uniformer_video_small}\noptim: {lr: 1e-4, weight_decay: 0.1}\n"
                                        "data: {format: video_list, num_frames: 16}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim: {weight_decay: 0.05}\ndata: {num_frames: 8}\n")
    cfg = load_config(tmp_path / "child.yaml", ["optim.lr=2e-3", "model.kwargs.depths=[1,1,1,1]",
                                                 "data.stride=2", "train.epochs=3"])
    assert cfg["optim"] == {**default_config()["optim"], "lr": 2e-3, "weight_decay": 0.05}
    assert cfg["data"] == {"format": "video_list", "num_frames": 8, "stride": 2}
    assert cfg["model"]["kwargs"] == {"depths": [1, 1, 1, 1]}
    assert cfg["train"]["epochs"] == 3
    assert cfg["out_dir"] == str(Path("runs") / "child")


def test_scientific_notation_is_a_number():
    assert parse_yaml("lr: 1e-4\nx: -2E+3\ny: 1e\n") == {"lr": 1e-4, "x": -2000.0, "y": "1e"}


@pytest.mark.parametrize("text,override,needle", [
    ("model: {name: m}\ntrain: {epochs: 2, epoch: 3}\n", None, "unknown key 'train.epoch'"),
    ("model: {name: m}\n", "optim.learning_rate=1", "--set optim.learning_rate=1: unknown key"),
    ("model: {name: m}\ntrain: {amp: fp8}\n", None, "train.amp = 'fp8' is invalid"),
    ("model: {name: m}\noptim: {lr: -1}\n", None, "optim.lr = -1 is invalid"),
    ("train: {epochs: 1}\n", None, "model.name = None is invalid"),
    ("model: {name: m}\n", "optim.lr", "expected KEY=VALUE"),
])
def test_errors_name_the_file_or_argument(tmp_path, text, override, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, [override] if override else None)
    assert needle in str(err.value)
    if override is None:
        assert str(path) in str(err.value)


def test_missing_and_circular_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_data_section_is_open_and_paths_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = apply_overrides(default_config(), ["data.anything_new=5", "model.name=x", "data.root=~/videos"])
    from uniformer.engine.config import validate_config

    cfg = validate_config(cfg)
    assert cfg["data"]["anything_new"] == 5
    assert cfg["data"]["root"] == str(tmp_path / "videos")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    cfg = load_config(path)
    assert cfg["model"]["name"].startswith("uniformer")
    data = cfg["data"]
    assert data["format"] in ("video_list", "sthv2", "image_folder", "image_list")
    if data["format"] == "sthv2":
        assert data["sampling"] == "uniform" and data["hflip"] is False and data["test_crops"] == 3
    if path.name.startswith("k400"):
        assert data["sampling"] == "dense" and data["stride"] == 4 and data["test_clips"] == 4
    if not path.name.startswith("demo"):
        assert cfg["optim"]["weight_decay"] == 0.05 and cfg["optim"]["no_decay_1d"] is True
        assert data["label_smoothing"] == 0.1 and data["mixup"] == 0.8 and data["cutmix"] == 1.0
        assert data["random_erasing"] == 0.25 and data["rand_augment"].startswith("rand-m")
        assert cfg["sched"]["warmup_epochs"] > 0 and cfg["optim"]["lr_base_batch"]


def test_shipped_recipes_build_their_data_section():
    """Every recipe's data: section passes the data pipeline's own validation."""
    from uniformer.data import parse_data_config

    for path in sorted(CONFIGS.glob("*.yaml")):
        parse_data_config({k: v for k, v in load_config(path)["data"].items() if k != "builder"})


def test_duplicate_keys_are_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model: {name: a}\ntrain: {epochs: 2}\ntrain: {epochs: 3}\n")
    with pytest.raises(ConfigError, match="duplicate key 'train'"):
        load_config(path)


def test_demo_yaml_is_the_demo_command_recipe():
    from uniformer.tasks.classification.demo import demo_recipe

    data = {"root": "R", "train_list": "R/train.txt", "val_list": "R/val.txt", "class_names": "R/classnames.txt"}
    from_code = load_config(None, None, base=demo_recipe(data))
    from_file = load_config(CONFIGS / "demo.yaml")
    for section in ("model", "optim", "sched", "checkpoint", "eval"):
        assert from_code[section] == from_file[section], section
    assert {k: v for k, v in from_code["train"].items() if k != "threads"} == \
        {k: v for k, v in from_file["train"].items() if k != "threads"}
    paths = ("root", "train_list", "val_list", "class_names", "num_workers")
    assert {k: v for k, v in from_code["data"].items() if k not in paths} == \
        {k: v for k, v in from_file["data"].items() if k not in paths}
