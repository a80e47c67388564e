"""Recipes, one schema for every task: defaults, `base:` (a path or a list), `--set`, strict keys, types, errors."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

import uniformer.tasks.dense.weights  # noqa: F401  (the dense tasks import cleanly)
from uniformer.engine.config import ConfigError, engine_defaults, parse_yaml
from uniformer.tasks import CONFIGS, TASKS, demo_recipe_path, load_recipe

VIDEO = "task: classification\nmodel: {name: m}\ndata: {format: video_list}\n"


def test_base_chain_list_and_overrides(tmp_path):
    (tmp_path / "model.yaml").write_text("model: {name: uniformer_video_small}\noptim: {lr: 1e-4, weight_decay: 0.1}\n")
    (tmp_path / "data.yaml").write_text("data: {format: video_list, num_frames: 16}\n")
    (tmp_path / "child.yaml").write_text("task: classification\nbase: [model.yaml, data.yaml]\n"
                                         "optim: {weight_decay: 0.05}\ndata: {num_frames: 8}\n")
    cfg = load_recipe(tmp_path / "child.yaml", ["optim.lr=2e-3", "model.kwargs.depths=[1,1,1,1]",
                                                "data.stride=2", "train.epochs=3", "train.batch_size=4"])
    assert cfg["optim"] == {**engine_defaults()["optim"], "lr": 2e-3, "weight_decay": 0.05}
    # the data section is recorded resolved: the keys given, and every default (what the run's config.yaml shows)
    assert {k: cfg["data"][k] for k in ("format", "num_frames", "stride")} == \
        {"format": "video_list", "num_frames": 8, "stride": 2}
    assert cfg["data"]["scale_jitter"] == [256, 320] and cfg["data"]["num_sample"] == 1
    assert cfg["model"]["kwargs"] == {"depths": [1, 1, 1, 1]}
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["batch_size"] == 4
    assert cfg["out_dir"] == str(Path("runs") / "child")


def test_scientific_notation_is_a_number():
    assert parse_yaml("lr: 1e-4\nx: -2E+3\ny: 1e\n") == {"lr": 1e-4, "x": -2000.0, "y": "1e"}


@pytest.mark.parametrize("text,override,needle", [
    (VIDEO + "train: {epochs: 2, epoch: 3}\n", None, "unknown key 'train.epoch'"),
    (VIDEO, "optim.learning_rate=1", "--set optim.learning_rate=1: unknown key"),
    (VIDEO + "train: {amp: fp8}\n", None, "train.amp = 'fp8' is invalid"),
    (VIDEO + "optim: {lr: -1}\n", None, "optim.lr = -1 is invalid"),
    ("task: classification\ndata: {format: video_list}\n", None, "model.name = None is invalid"),
    (VIDEO, "optim.lr", "expected KEY=VALUE"),
    # unknown keys are errors in every section of every task (this was a warning: training ran with batch 8)
    ("task: classification\nmodel: {name: m}\ndata: {format: video_list, batchsize: 32}\n", None,
     "unknown key(s) ['batchsize']"),
    (VIDEO + "train: {batch_size: two}\n", None, "train.batch_size = 'two' is invalid"),
    ("task: segmentation\ndata: {img_scale: big}\n", None, "data.img_scale = 'big' is invalid: expected a list"),
    ("task: detection\nmodel: {backbone: {nam: x}}\n", None, "unknown key 'model.backbone.nam'"),
    ("task: pose\ntest: {flip: 2}\n", None, "test.flip = 2 is invalid: expected true or false"),
    ("task: pose\ntrain: {iters: 10}\n", None, "give exactly one of them"),
    ("task: classification\nmodel: {name: m}\ndata: {format: video_list, batch_size: 2}\n", None,
     "data.batch_size is now train.batch_size"),
    ("task: tracking\n", None, "task = 'tracking'"),
])
def test_errors_name_the_file_or_argument(tmp_path, text, override, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_recipe(path, [override] if override else None)
    assert needle in str(err.value)
    if override is None and "tracking" not in text:
        assert str(path) in str(err.value)


def test_missing_and_circular_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="circular"):
        load_recipe(tmp_path / "a.yaml")


def test_duplicate_keys_are_an_error_in_every_task(tmp_path):
    for task in TASKS:
        path = tmp_path / f"dup_{task}.yaml"
        path.write_text(f"task: {task}\ntrain: {{epochs: 2}}\ntrain: {{epochs: 3}}\n")
        with pytest.raises(ConfigError, match="duplicate key 'train'"):
            load_recipe(path)


def test_recipe_without_task_is_classification_with_a_deprecation_message(tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text("model: {name: m}\ndata: {format: video_list, root: ~/videos}\n")
    with caplog.at_level(logging.WARNING):
        cfg = load_recipe(path)
    assert cfg["task"] == "classification" and "names no task" in caplog.text
    assert not cfg["data"]["root"].startswith("~")


def test_the_same_settings_have_the_same_names_in_every_task():
    for task in TASKS:
        cfg = load_recipe(demo_recipe_path(task))
        assert cfg["task"] == task
        for key in ("batch_size", "num_workers", "epochs", "iters", "accum_steps", "amp", "eval_every"):
            assert key in cfg["train"], (task, key)
        for key in ("warmup_epochs", "warmup_iters", "warmup_lr", "warmup_ratio"):
            assert key in cfg["sched"], (task, key)
        assert set(cfg["checkpoint"]) == {"every", "keep_last", "best_metric", "save_best"}


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "_base"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipes_load(path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_recipe(path)
    assert "names no task" not in caplog.text  # every shipped recipe names its task
    if cfg["task"] != "classification":
        return
    assert cfg["model"]["name"].startswith("uniformer")
    data = cfg["data"]
    if data["format"] == "sthv2":
        assert data["sampling"] == "uniform" and data["hflip"] is False and data["test_crops"] == 3
    if path.stem.endswith(("_k400", "_k600")):
        assert data["sampling"] == "dense" and data["test_clips"] == 4
    if not path.name.startswith("demo"):  # every value is checked against the original in tests/configs
        assert cfg["optim"]["no_decay_1d"] is True
        assert data["label_smoothing"] == 0.1 and data["mixup"] == 0.8 and data["cutmix"] == 1.0
        assert data["random_erasing"] == 0.25 and data["rand_augment"]
        assert cfg["sched"]["warmup_epochs"] > 0 and cfg["optim"]["lr_base_batch"]


def test_every_task_has_a_demo_recipe_file_in_the_package():
    import uniformer

    for task in TASKS:
        assert demo_recipe_path(task) == CONFIGS / task / "demo.yaml"
    assert CONFIGS.parent == Path(uniformer.__file__).resolve().parent
    # pyproject's package-data ships configs/*.yaml and configs/*/*.yaml: nothing may sit deeper
    assert all(len(p.relative_to(CONFIGS).parts) <= 2 for p in CONFIGS.rglob("*.yaml"))
    with pytest.raises(ConfigError, match="no demo recipe for task 'tracking'"):
        demo_recipe_path("tracking")
