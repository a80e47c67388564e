"""Tasks: what a model is trained to do. Each `uniformer.tasks.<task>` package implements the engine's `Task`
protocol (`uniformer.engine.task`) in its `Task` class; this module finds them by name and connects recipes,
checkpoints and the runner:

    cfg = load_recipe("configs/segmentation/demo.yaml", ["train.iters=100"])   # any task's recipe
    summary = train(cfg, "runs/seg")                                           # Runner(build_task(cfg), ...)
    task = task_from_checkpoint("runs/seg/best.pt")                            # the task and recipe it records
"""
from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from uniformer.engine.checkpoint import read_checkpoint
from uniformer.engine.config import ConfigError, load_config, recipe_task

__all__ = ["TASKS", "task_class", "load_recipe", "build_task", "train", "task_from_checkpoint", "demo_recipe_path",
           "prepare_demo_data", "run_demo", "recipe_complexity"]

TASKS = ("classification", "detection", "segmentation", "pose")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the recipes ship in the package (`configs/` of a checkout)


def task_class(name: str) -> type:
    """The `Task` class of a task name."""
    if name not in TASKS:
        raise ConfigError(f"task = {name!r}: expected one of {', '.join(TASKS)}")
    return importlib.import_module(f"uniformer.tasks.{name}").Task


def load_recipe(source: str | os.PathLike | Mapping | None, overrides: Sequence[str] | None = None, *,
                task: str | None = None) -> dict:
    """Resolve a recipe of any task (file or mapping) with `--set` overrides; `task` when `source` is None."""
    name = task or (recipe_task(source) if source is not None else None)
    if name is None:
        raise ConfigError("give a recipe or a task")
    if isinstance(source, Mapping) and "task" not in source:
        source = {**source, "task": name}
    cls = task_class(name)
    return load_config(source, overrides, task_defaults=cls.defaults(), validate=cls.validate)


def build_task(cfg: Mapping, meta: Mapping | None = None):
    """The task object of a resolved recipe (with a checkpoint's `meta` to rebuild a trained model)."""
    return task_class(cfg["task"])(dict(cfg), meta)


def train(cfg: Mapping, out_dir: str | os.PathLike, *, resume: str | None = None, device: str | None = None,
          show_progress: bool = True) -> dict:
    """Train a resolved recipe of any task into `out_dir` (see `uniformer.engine.Runner`)."""
    from uniformer.engine.runner import Runner

    return Runner(build_task(cfg), out_dir, resume=resume, device=device, show_progress=show_progress).fit()


def _upgrade_recipe(task: str, cfg: Mapping) -> dict:
    """A recipe recorded by an earlier release in today's schema (weights-only checkpoints of those layouts)."""
    cfg = copy.deepcopy(dict(cfg))
    cfg["task"] = task
    train_cfg = cfg.setdefault("train", {})
    if task == "classification":
        data = cfg.get("data", {})
        for key in ("batch_size", "num_workers", "pin_memory", "prefetch_factor"):
            if key in data:
                train_cfg[key] = data.pop(key)
        for key in ("drop_last", "persistent_workers"):
            data.pop(key, None)
    else:
        if "seed" in train_cfg:
            cfg["seed"] = train_cfg.pop("seed")
        if "checkpoint_every" in train_cfg:
            cfg.setdefault("checkpoint", {})["every"] = train_cfg.pop("checkpoint_every") or 1
        train_cfg.pop("max_iters", None)
        if train_cfg.get("eval_every") is None:
            train_cfg["eval_every"] = None
    return cfg


def task_from_checkpoint(checkpoint: str | os.PathLike, recipe: str | os.PathLike | Mapping | None = None,
                         overrides: Sequence[str] | None = None, task: str | None = None):
    """The task behind `checkpoint`: the task and recipe recorded in a checkpoint of this package (a recipe
    given too replaces the recorded one, e.g. for other data), or `task` and `recipe` for an original
    toolbox file. Returns the task object, ready for `build_model()` and `load_weights()`."""
    ckpt = read_checkpoint(checkpoint)
    if ckpt is not None:
        name = ckpt["task"]
        if task is not None and task != name:
            raise ConfigError(f"{checkpoint}: this is a {name} checkpoint, not a {task} one")
        if recipe is not None:
            given = recipe_task(recipe)
            if given != name:
                raise ConfigError(f"{checkpoint}: this is a {name} checkpoint; the recipe {recipe} is a {given} recipe")
            cfg = load_recipe(recipe, overrides)
        else:
            recorded = ckpt["config"] if ckpt["version"] == 2 else _upgrade_recipe(name, ckpt["config"])
            cfg = load_recipe(recorded, overrides, task=name)
        return build_task(cfg, ckpt["meta"])
    if recipe is None and task is None:
        raise ConfigError(f"{checkpoint} is not a checkpoint of this package, so it records no task or recipe: "
                          "give the recipe (or --task for an original toolbox file)")
    cfg = load_recipe(recipe, overrides, task=task)
    if task is not None and cfg["task"] != task:
        raise ConfigError(f"--task {task}: the recipe {recipe} is a {cfg['task']} recipe")
    return build_task(cfg)


def demo_recipe_path(task: str) -> Path:
    """`configs/<task>/demo.yaml` of the package, the recipe `uniformer demo --task <task>` trains."""
    if task not in TASKS:
        raise ConfigError(f"no demo recipe for task {task!r}: expected one of {', '.join(TASKS)}")
    path = CONFIGS / task / "demo.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"the demo recipe of {task} ({path}) is missing from the installed package")
    return path


def prepare_demo_data(task) -> Path:
    """Generate (once) the built-in data of a demo recipe's task under its `data.root`; returns that folder."""
    import fcntl

    from uniformer.engine.config import expand_path

    root = Path(expand_path(task.cfg["data"]["root"]))
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:  # one generator at a time (torchrun)
        fcntl.flock(lock, fcntl.LOCK_EX)
        task.prepare_demo(root)
    return root


def run_demo(task_name: str, out_dir: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
             overrides: Sequence[str] = (), resume: str | None = None, device: str | None = None,
             show_progress: bool = True, show: int = 4) -> dict:
    """`uniformer demo --task T`: generate (once) T's built-in data under the demo recipe's `data.root`
    (or `data_root`), train `configs/T/demo.yaml` with the runner, draw example predictions into
    `out_dir/examples` (`show` of them) and add the demo's bar to `metrics.json`. Returns the run's summary."""
    import time

    from uniformer.engine.distributed import resolve_device
    from uniformer.engine.reporting import write_json

    start = time.perf_counter()
    resolve_device(device, int(os.environ.get("LOCAL_RANK", "0") or 0))  # before any work
    over = list(overrides) + ([f"data.root={data_root}"] if data_root else [])
    cfg = load_recipe(demo_recipe_path(task_name), over)
    task = build_task(cfg)
    root = prepare_demo_data(task)
    summary = train(cfg, out_dir, resume=resume, device=device, show_progress=show_progress)
    if os.environ.get("RANK", "0") in ("", "0"):
        out_dir = Path(out_dir)
        best = out_dir / "best.pt"
        examples = task.demo_examples(best if best.is_file() else out_dir / "last.pt", out_dir / "examples", device,
                                      show)
        bar = {f"val_{k}": v for k, v in task.demo_bar.items()}
        summary.update(bar=bar, passed=all((summary.get(k) or 0.0) >= v for k, v in bar.items()),
                       wall_seconds=time.perf_counter() - start, data=str(root))
        write_json(out_dir / "metrics.json", {k: v for k, v in summary.items() if k != "history"})
        summary["examples"] = examples
    return summary


def recipe_complexity(cfg: Mapping) -> dict:
    """Parameters and GFLOPs (multiply-adds, batch 1) of the model a resolved recipe builds, at its test input."""
    return importlib.import_module(f"uniformer.tasks.{cfg['task']}").recipe_complexity(cfg)
