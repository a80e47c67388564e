"""The task-agnostic engine: recipes, the `Runner` (one training loop for every task), checkpoints, processes.

    from uniformer.tasks import load_recipe, build_task
    from uniformer.engine import Runner
    task = build_task(load_recipe("configs/segmentation/demo.yaml", ["train.iters=100"]))
    summary = Runner(task, "runs/seg").fit()

`uniformer.tasks.<task>` implement the `Task` protocol; nothing here imports them.
"""
from uniformer.engine.checkpoint import (
    CheckpointManager,
    atomic_save,
    load_run_checkpoint,
    load_run_weights,
    open_checkpoint,
)
from uniformer.engine.config import ConfigError, apply_overrides, load_config, read_recipe, recipe_task, resolve_out_dir
from uniformer.engine.distributed import resolve_device
from uniformer.engine.ema import ModelEma
from uniformer.engine.optim import LRSchedule, build_optimizer, param_groups
from uniformer.engine.runner import Runner, eval_batches, evaluate_checkpoint, evaluate_model
from uniformer.engine.task import Task

__all__ = [
    "CheckpointManager", "ConfigError", "LRSchedule", "ModelEma", "Runner", "Task", "apply_overrides", "atomic_save",
    "build_optimizer", "eval_batches", "evaluate_checkpoint", "evaluate_model", "load_config", "load_run_checkpoint",
    "load_run_weights", "open_checkpoint", "param_groups", "read_recipe", "recipe_task", "resolve_device",
    "resolve_out_dir",
]
