"""Tasks: what a model is trained to do. Each `uniformer.tasks.<task>` package implements the engine's `Task`
protocol (`uniformer.engine.task`) in its `Task` class; this module finds them by name and connects recipes,
checkpoints and the runner:

    cfg = load_recipe("configs/segmentation/demo.yaml", ["train.iters=100"])   # any task's recipe
    summary = train(cfg, "runs/seg")                                           # Runner(build_task(cfg), ...)
    run = open("runs/seg/best.pt")                       # the task, recipe and trained model a checkpoint records
    results = run.predict(["photo.jpg"], "predictions")  # Task.predict with that model
"""
from __future__ import annotations

import builtins
import copy
import fcntl
import importlib
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniformer.deploy import export_for_runtime
from uniformer.engine.checkpoint import CheckpointFile, as_checkpoint
from uniformer.engine.config import ConfigError, expand_path, load_config, recipe_task
from uniformer.engine.distributed import resolve_device
from uniformer.engine.reporting import write_json
from uniformer.engine.runner import Runner
from uniformer.models.fuse import fuse
from uniformer.precision import resolve_dtype

__all__ = ["TASKS", "task_class", "load_recipe", "build_task", "train", "task_from_checkpoint", "open", "Opened",
           "demo_recipe_path", "prepare_demo_data", "run_demo", "recipe_complexity"]

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
        train_cfg.setdefault("eval_every", None)
    return cfg


def task_from_checkpoint(checkpoint: str | os.PathLike | CheckpointFile,
                         recipe: str | os.PathLike | Mapping | None = None,
                         overrides: Sequence[str] | None = None, task: str | None = None):
    """The task object behind `checkpoint` (a path or a file already read), ready for `build_model()` and
    `load_weights()`: from the task and recipe a run checkpoint records (a `recipe` given replaces that one),
    or from `task` / `recipe` for an original toolbox file."""
    ckpt = as_checkpoint(checkpoint)
    checkpoint, run, name = ckpt.path, ckpt.run, ckpt.task
    if run is not None:
        if task is not None and task != name:
            raise ConfigError(f"{checkpoint}: this is a {name} checkpoint, not a {task} one")
        if recipe is not None:
            given = recipe_task(recipe)
            if given != name:
                raise ConfigError(f"{checkpoint}: this is a {name} checkpoint; the recipe {recipe} is a {given} recipe")
            cfg = load_recipe(recipe, overrides)
        else:
            recorded = run["config"] if run["version"] == 2 else _upgrade_recipe(name, run["config"])
            cfg = load_recipe(recorded, overrides, task=name)
        return build_task(cfg, run["meta"])
    if recipe is None and task is None:
        raise ConfigError(f"{checkpoint} is not a checkpoint of this package, so it records no task or recipe: "
                          "give the recipe (or --task for an original toolbox file)")
    cfg = load_recipe(recipe, overrides, task=task)
    if task is not None and cfg["task"] != task:
        raise ConfigError(f"--task {task}: the recipe {recipe} is a {cfg['task']} recipe")
    return build_task(cfg)


@dataclass
class Opened:
    """A task with its trained model, from `open`: what prediction, evaluation, the web page and export use."""

    task: Any            # the Task (its recipe in `task.cfg`, class names etc. in `task.meta`)
    model: Any           # torch.nn.Module in eval mode on `device` (or a runtime's export of it)
    checkpoint: CheckpointFile
    device: Any          # torch.device
    dtype: str = "float32"  # classification prediction: float32, or bfloat16 / float16 autocast
    source: str = ""     # what was opened, in words (a tag or a file name)

    def predict(self, inputs, out_dir: str | os.PathLike | None = None, **options) -> list[dict]:
        """`Task.predict` with this model: one record per input (with `out_dir`, pictures and JSON there)."""
        if self.task.name == "classification":
            options.setdefault("dtype", self.dtype)
        unknown = sorted(k for k, v in options.items() if v is not None and k != "dtype"
                         and k not in getattr(self.task, "predict_options", ()))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not an option of {self.task.name} prediction")
        return self.task.predict(self.model, inputs, out_dir, **{k: v for k, v in options.items() if v is not None})


def _check_classification_options(task: str | None, model, model_options, labels, data, runtime: str,
                                  dtype: str | None) -> None:
    if task in (None, "classification"):
        return
    given = {"--model": model, "-o": model_options, "--labels": labels, "--data": data,
             "--runtime": runtime if runtime != "torch" else None, "--dtype": dtype}
    if any(given.values()):
        raise ValueError(f"{', '.join(k for k, v in given.items() if v)}: classification options; a {task} "
                         "checkpoint takes its model, classes and precision from its recipe")


def _is_tag(text: str) -> bool:
    return "." in text and "/" not in text and not Path(text).exists() \
        and Path(text).suffix.lower() not in (".pt", ".pth", ".safetensors", ".ckpt", ".bin", ".tar")


def open(source: str | os.PathLike | None = None, *, model: str | None = None,
         recipe: str | os.PathLike | Mapping | None = None, overrides: Sequence[str] | None = None,
         task: str | None = None, model_options: Mapping | None = None, labels: str | None = None,
         data: Mapping | None = None, use_ema: bool = False, device: str | None = None, dtype: str | None = None,
         runtime: str = "torch", check: Any = None) -> Opened:
    """The task and trained model behind `source`: a checkpoint file (a run checkpoint records its task and
    recipe; an original toolbox file needs `recipe` or `task`, a classification one `model`, the variant or
    its `NAME.TAG`), or a released tag `NAME.TAG` (its weights from the hub, its test view and class names).

    The file is read once; the weights (EMA ones with `use_ema`) load strictly. Classification only:
    `model_options` (an original file's architecture), `labels` (a file of class names), `data` (test-view keys),
    `runtime` (onnxruntime / openvino run the fused model's export), `dtype` (None or "auto": bfloat16 autocast
    where fast). `check(task)` runs before the model is built (a command's checks of its options against the task)."""
    from .classification.predict import fetch_released, original_meta, original_recipe, released_of

    dev = resolve_device(device)  # an unavailable device fails before any download
    _check_classification_options(task or (recipe_task(recipe) if recipe is not None else None), model,
                                  model_options, labels, data, runtime, dtype)
    if source is not None and _is_tag(str(source)):
        if model is not None:
            raise ValueError(f"{source} is a released tag; --model is for an original checkpoint file")
        source, model = None, str(source)
    released, full_name = None, model
    if source is None or "." in (model or ""):
        released, full_name = released_of(model)
    if source is None:
        if released is None:
            raise ValueError(f"--checkpoint is needed: {model or 'no --model'} names no released weights "
                             "(`uniformer models --pretrained` lists the tags, e.g. uniformer_video_small.k400_16x8)")
        source = fetch_released(full_name)
        title = f"`{full_name}`"
    else:
        title = f"checkpoint `{Path(source).name}`"
    ckpt = as_checkpoint(source)  # the one read of the weights file
    name = ckpt.task or task or ("classification" if recipe is None else recipe_task(recipe))
    _check_classification_options(name, model, model_options, labels, data, runtime, dtype)
    if ckpt.run is None and name != "classification" and recipe is None:
        raise ConfigError(f"{ckpt.path} is not a checkpoint of this package, so it records no task or recipe: give "
                          f"the recipe of this {name} model (--config)")
    if ckpt.run is not None or recipe is not None:  # (another task's original file has its recipe: see above)
        the_task = task_from_checkpoint(ckpt, recipe, overrides, task)
        if the_task.name == "classification" and ckpt.run is None:  # an original file with its recipe
            the_task.meta = original_meta(ckpt, the_task.cfg)
        elif the_task.name == "classification":
            spec = the_task.meta["model_spec"]
            if model and model.split(".")[0] != spec["name"]:
                raise ValueError(f"--model {model}: {ckpt.path} was trained as {spec['name']}")
            if model_options:
                raise ValueError(f"-o model options are for original checkpoints; {ckpt.path} records its "
                                 f"architecture ({spec['kwargs']})")
    else:
        cfg, meta = original_recipe(ckpt, model, released, full_name, model_options)
        the_task = build_task(load_recipe(cfg, overrides), meta)
    if check is not None:
        check(the_task)
    if the_task.name == "classification":
        the_task.configure_inference(labels, data)
    net = the_task.build_model(for_training=False)
    the_task.load_weights(net, ckpt, use_ema=use_ema)
    net.to(dev).eval()
    if runtime != "torch":
        net = _runtime_model(the_task, net, runtime, dev, dtype)
        dtype = "float32"
    return Opened(the_task, net, ckpt, dev, resolve_dtype(dtype or "auto", dev), title)


def _runtime_model(task, model, runtime: str, device, dtype: str | None):
    """The fused classifier exported for `runtime` at the test view's input size (any batch)."""
    from .classification import model_input_ndim

    if device.type != "cpu" or dtype == "bfloat16":
        raise ValueError(f"--runtime {runtime} runs float32 on the CPU: drop --device {device} / --dtype {dtype}")
    cfg = task.data_view(model)
    size = cfg["input_size"]
    shape = (3, cfg["num_frames"], size, size) if model_input_ndim(model) == 5 else (3, size, size)
    with tempfile.TemporaryDirectory(prefix=f"uniformer_{runtime}_") as workdir:  # loaded into memory
        return export_for_runtime(fuse(model), runtime, shape, workdir)


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
    root = Path(expand_path(task.cfg["data"]["root"]))
    root.parent.mkdir(parents=True, exist_ok=True)
    with builtins.open(root.parent / f".{root.name}.lock", "w") as lock:  # one generator at a time (torchrun)
        fcntl.flock(lock, fcntl.LOCK_EX)
        task.prepare_demo(root)
    return root


def run_demo(task_name: str, out_dir: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
             overrides: Sequence[str] = (), resume: str | None = None, device: str | None = None,
             show_progress: bool = True, show: int = 4) -> dict:
    """`uniformer demo --task T`: generate (once) T's built-in data under the demo recipe's `data.root`
    (or `data_root`), train `configs/T/demo.yaml` with the runner, draw example predictions into
    `out_dir/examples` (`show` of them) and add the demo's bar to `metrics.json`. Returns the run's summary."""
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
        opened = open(best if best.is_file() else out_dir / "last.pt", device=device)
        examples = opened.task.demo_examples(opened.model, out_dir / "examples", show)
        bar = {f"val_{k}": v for k, v in task.demo_bar.items()}
        summary.update(bar=bar, passed=all((summary.get(k) or 0.0) >= v for k, v in bar.items()),
                       wall_seconds=time.perf_counter() - start, data=str(root))
        write_json(out_dir / "metrics.json", {k: v for k, v in summary.items() if k != "history"})
        summary["examples"] = examples
    return summary


def recipe_complexity(cfg: Mapping) -> dict:
    """Parameters and GFLOPs (multiply-adds, batch 1) of the model a resolved recipe builds, at its test input."""
    return importlib.import_module(f"uniformer.tasks.{cfg['task']}").recipe_complexity(cfg)
