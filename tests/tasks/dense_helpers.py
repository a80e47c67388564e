"""Helpers of the dense-task tests: tiny backbones, tiny recipes, broken files, original-layout checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_BACKBONE = {"name": "uniformer_small", "drop_path_rate": 0.0,
                 "kwargs": {"depths": [1, 1, 2, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}}


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def write_garbage_image(path: Path) -> Path:
    """A file with an image suffix that no decoder can read."""
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" + bytes(range(64)))
    return path


def save_original_checkpoint(path: Path, sections: dict[str, dict[str, torch.Tensor]]) -> Path:
    """An mmdet / mmseg / mmpose style file: {"meta": ..., "state_dict": {"<section>.<key>": tensor}}."""
    state = {}
    for prefix, sd in sections.items():
        state.update({f"{prefix}.{k}": v.clone() for k, v in sd.items()})
    torch.save({"meta": {"mmcv_version": "1.3.8", "epoch": 12}, "state_dict": state}, path)
    return path


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def losses_fell(history: list[dict], key: str = "loss") -> tuple[float, float]:
    """Mean of the first and of the last third of the logged losses."""
    values = [h[key] for h in history]
    n = max(1, len(values) // 3)
    return sum(values[:n]) / n, sum(values[-n:]) / n


# --- the Task API, as the commands use it ------------------------------------------------------------------
def recipe(task: str, cfg=None, overrides=()) -> dict:
    """A resolved recipe of `task` from a path, a mapping in recipe layout or a resolved recipe."""
    from uniformer.tasks import load_recipe

    return load_recipe(cfg if cfg is not None else {}, overrides, task=task)


def build(task: str, cfg=None, num_classes: int | None = None):
    """The model of a recipe (`model.checkpoint` loaded), with `num_classes` detection classes when given."""
    from uniformer.tasks import build_task

    meta = {"classes": [f"class_{i}" for i in range(num_classes)]} if num_classes is not None else None
    return build_task(recipe(task, cfg), meta).build_model()


def train(task: str, cfg, out_dir, **options) -> dict:
    from uniformer.tasks import train as run

    return run(recipe(task, cfg), out_dir, **options)


def evaluate(checkpoint, cfg=None) -> dict:
    """`uniformer eval`: the engine's evaluation of a checkpoint (its recipe, or `cfg`) on the recipe's split."""
    from uniformer.engine import evaluate_checkpoint
    from uniformer.engine.checkpoint import open_checkpoint
    from uniformer.tasks import task_from_checkpoint

    ckpt = open_checkpoint(checkpoint)
    return evaluate_checkpoint(task_from_checkpoint(ckpt, cfg), ckpt, device="cpu")


def predict(checkpoint, inputs, out_dir, cfg=None, **options) -> list[dict]:
    """`uniformer predict`: `Task.predict` of the task and model `uniformer.tasks.open` gives."""
    from uniformer.tasks import open as open_checkpoint

    return open_checkpoint(checkpoint, recipe=cfg, device="cpu").predict(inputs, out_dir, **options)
