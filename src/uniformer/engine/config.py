"""Recipes as YAML, one schema for every task: defaults <- `base:` files <- the recipe <- `--set key=value`.

A recipe is one YAML mapping with a `task:` (classification, detection, segmentation, pose). The
engine owns the sections every task shares; the task adds its own (`model`, `data`, `test`) and
may change engine defaults. Every key must exist in these defaults, so a typo fails at start-up
with the file (or `--set`) and the dotted key named; a mapping whose default is empty (`{}`, e.g.
`model.kwargs`) is free-form and checked by its owner. A key given twice in one YAML mapping is
an error. Types and ranges of the engine's keys are checked here, the task's by the task.

Engine sections (defaults in brackets; a task may change them):

    task (required)  description [""]  seed [0]  deterministic [false]  out_dir [runs/<recipe name>]
    train:  epochs | iters (exactly one), batch_size [8] (per process), num_workers [4], accum_steps [1],
            amp [auto|none|bf16|fp16], clip_grad [null], eval_every [1] (epochs or iterations; null: at the
            end only), log_every [10] (optimiser steps), max_steps_per_epoch [null], sync_bn [null: off; true:
            every BatchNorm, or a list of the model's top-level parts, e.g. [decode_head]; GPUs only],
            threads [null], pin_memory [true], prefetch_factor [null]
    optim:  name [adamw], lr [1e-3], lr_base_batch [null: lr as is; else lr x global batch / lr_base_batch],
            weight_decay [0.05], betas [[0.9, 0.999]], eps [1e-8], no_decay_1d [true], no_decay_keys [[]]
    sched:  name [cosine|poly|step|constant], warmup_epochs [0] | warmup_iters [0], warmup_lr [1e-6]
            (start of the warm-up) or warmup_ratio [null] (start as a fraction of the peak), min_lr [1e-6],
            power [1.0] (poly), steps [[]] and gamma [0.1] (step; in epochs or iterations, as the run)
    ema:    enabled [false], decay [0.9999], warmup [false], eval [true]
    checkpoint: every [1] (epochs or iterations), keep_last [2], best_metric [the task's], save_best [true]
    eval:   split [val], batch_size [null = train.batch_size], num_workers [null = train.num_workers],
            use_ema [false]
"""
from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

_logger = logging.getLogger("uniformer.engine.config")
AMP_MODES = ("auto", "none", "bf16", "fp16")
SCHEDULES = ("cosine", "poly", "step", "constant")


class ConfigError(ValueError):
    """A recipe that cannot be used; the message names the file, key or argument at fault."""


class _Loader(yaml.SafeLoader):
    """Safe YAML with two fixes for recipes: `1e-4` (no dot; a string in YAML 1.1) is a float, and a key
    given twice in one mapping is an error instead of silently keeping the last value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def parse_yaml(text: str):
    """`yaml.safe_load`, except that `1e-4` is a float and duplicate keys are errors."""
    return yaml.load(text, Loader=_Loader)


def _yaml_value(value: str, where: str) -> Any:
    try:
        return parse_yaml(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: the value is not valid YAML ({e})") from None


def parse_pairs(pairs: Sequence[str] | None, flag: str) -> dict:
    """`KEY=VALUE` strings with YAML values (`-o depths=[1,1,1,1]`) as a dict; errors name `flag`."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = _yaml_value(value, f"{flag} {pair!r}")
    return out


def engine_defaults() -> dict:
    """A fresh copy of the engine's sections (see the module docstring)."""
    return {
        "task": None, "description": "", "seed": 0, "deterministic": False, "out_dir": None,
        "train": {"epochs": None, "iters": None, "batch_size": 8, "num_workers": 4, "accum_steps": 1, "amp": "auto",
                  "clip_grad": None, "eval_every": 1, "log_every": 10, "max_steps_per_epoch": None,
                  "sync_bn": None, "threads": None, "pin_memory": True, "prefetch_factor": None},
        "optim": {"name": "adamw", "lr": 1e-3, "lr_base_batch": None, "weight_decay": 0.05, "betas": [0.9, 0.999],
                  "eps": 1e-8, "no_decay_1d": True, "no_decay_keys": []},
        "sched": {"name": "cosine", "warmup_epochs": 0.0, "warmup_iters": 0, "warmup_lr": 1e-6, "warmup_ratio": None,
                  "min_lr": 1e-6, "power": 1.0, "steps": [], "gamma": 0.1},
        "ema": {"enabled": False, "decay": 0.9999, "warmup": False, "eval": True},
        "checkpoint": {"every": 1, "keep_last": 2, "best_metric": None, "save_best": True},
        "eval": {"split": "val", "batch_size": None, "num_workers": None, "use_ema": False},
    }


def free_sections(defaults: Mapping, _path: str = "") -> frozenset[str]:
    """Dotted names of the free-form mappings of a schema (those whose default is empty)."""
    found: set[str] = set()
    for key, value in defaults.items():
        if isinstance(value, Mapping):
            found |= {f"{_path}{key}"} if not value else free_sections(value, f"{_path}{key}.")
    return frozenset(found)


def merge(base: Mapping, update: Mapping, *, where: str = "config", strict: bool = True,
          free: frozenset[str] = frozenset(), _path: str = "") -> dict:
    """Recursive merge of `update` into a copy of `base`; with `strict`, a key `base` lacks is an error,
    except inside the free-form mappings named in `free`."""
    out = copy.deepcopy(dict(base))
    open_here = _path.rstrip(".") in free or any(_path.startswith(f"{f}.") for f in free)
    for key, value in update.items():
        dotted = f"{_path}{key}"
        if strict and key not in out and not open_here:
            known = ", ".join(sorted(map(str, out))) or "none"
            raise ConfigError(f"{where}: unknown key '{dotted}' (known keys here: {known})")
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value, where=where, strict=strict, free=free, _path=f"{dotted}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_recipe(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict:
    """A recipe file merged over the files it extends (`base:` a path or a list, relative to the file)."""
    path = Path(path).expanduser().resolve()
    if path in _chain:
        raise ConfigError(f"{path}: circular 'base:' chain ({' -> '.join(str(p) for p in _chain + (path,))})")
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'base' must be a file name or a list of file names")
    merged: dict = {}
    for b in bases:
        merged = merge(merged, read_recipe(path.parent / b, _chain + (path,)), strict=False)
    return merge(merged, data, strict=False)


def recipe_task(source: str | os.PathLike | Mapping) -> str:
    """The `task:` a recipe (file, following `base:`, or mapping) names; classification, with a
    deprecation message, for the classification recipes written before `task:` was required."""
    recipe = read_recipe(source) if not isinstance(source, Mapping) else source
    task = recipe.get("task")
    if task is None:
        _logger.warning("%s names no task: read as a classification recipe; add 'task: classification' (recipes "
                        "without a task are deprecated)", source if not isinstance(source, Mapping) else "the recipe")
        return "classification"
    if not isinstance(task, str):
        raise ConfigError(f"task = {task!r}: expected a task name")
    return task


def apply_overrides(cfg: Mapping, overrides: Sequence[str] | None, free: frozenset[str] = frozenset()) -> dict:
    """Apply `section.key=value` strings (values parsed as YAML) to a copy of `cfg`; unknown keys raise."""
    out = copy.deepcopy(dict(cfg))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        keys = key.strip().split(".")
        if not sep or not all(keys):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=5e-4")
        nested = _yaml_value(value, f"--set {item!r}")
        for k in reversed(keys):
            nested = {k: nested}
        out = merge(out, nested, where=f"--set {item}", free=free)
    return out


def expand_path(value: Any) -> Any:
    return os.path.expandvars(os.path.expanduser(value)) if isinstance(value, str) else value


def check(cond: bool, where: str, key: str, value: Any, what: str) -> None:
    """Raise ConfigError('<where>: <key> = <value> is invalid: <what>') unless `cond`."""
    if not cond:
        raise ConfigError(f"{where}: {key} = {value!r} is invalid: {what}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _positive_int_or_none(v: Any) -> bool:
    return v is None or (_is_int(v) and v >= 1)


def check_types(cfg: Mapping, defaults: Mapping, where: str, _path: str = "") -> None:
    """Every value has its default's type (numbers interchangeable, null always allowed); free-form
    mappings (empty defaults) are left to their owner."""
    kinds = ((bool, "true or false"), (int | float, "a number"), (str, "a string"), (list | tuple, "a list"))
    for key, default in defaults.items():
        value = cfg.get(key)
        dotted = f"{_path}{key}"
        if value is None or default is None:
            continue
        if isinstance(default, Mapping):
            check(isinstance(value, Mapping), where, dotted, value, "expected a mapping")
            if default:
                check_types(value, default, where, f"{dotted}.")
            continue
        for kind, what in kinds:
            if isinstance(default, kind):
                ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
                check(ok, where, dotted, value, f"expected {what}")
                break


def validate_engine(cfg: dict, where: str) -> None:
    """Types and ranges of the engine's sections."""
    t, o, s, e, c, ev = (cfg[k] for k in ("train", "optim", "sched", "ema", "checkpoint", "eval"))
    check(_is_int(cfg["seed"]) and cfg["seed"] >= 0, where, "seed", cfg["seed"], "expected an integer >= 0")
    check(isinstance(cfg["deterministic"], bool), where, "deterministic", cfg["deterministic"], "expected a bool")
    check((t["epochs"] is None) != (t["iters"] is None), where, "train.epochs / train.iters",
          [t["epochs"], t["iters"]], "give exactly one of them (set the other to null)")
    for key in ("epochs", "iters", "max_steps_per_epoch", "eval_every", "threads", "prefetch_factor"):
        check(_positive_int_or_none(t[key]), where, f"train.{key}", t[key], "expected an integer >= 1 or null")
    for key in ("batch_size", "accum_steps", "log_every"):
        check(_is_int(t[key]) and t[key] >= 1, where, f"train.{key}", t[key], "expected an integer >= 1")
    check(_is_int(t["num_workers"]) and t["num_workers"] >= 0, where, "train.num_workers", t["num_workers"],
          "expected an integer >= 0")
    check(t["amp"] in AMP_MODES, where, "train.amp", t["amp"], f"expected one of {list(AMP_MODES)}")
    check(t["clip_grad"] is None or (_is_num(t["clip_grad"]) and t["clip_grad"] > 0), where, "train.clip_grad",
          t["clip_grad"], "expected a positive number or null")
    check(isinstance(t["pin_memory"], bool), where, "train.pin_memory", t["pin_memory"], "expected true or false")
    check(t["sync_bn"] is None or isinstance(t["sync_bn"], bool) or (isinstance(t["sync_bn"], list) and t["sync_bn"]
                                             and all(isinstance(n, str) and n for n in t["sync_bn"])),
          where, "train.sync_bn", t["sync_bn"], "expected true, false (or null) or a list of the model's part names")
    check(o["name"] == "adamw", where, "optim.name", o["name"], "only 'adamw' is supported")
    for key in ("lr", "eps"):
        check(_is_num(o[key]) and o[key] > 0, where, f"optim.{key}", o[key], "expected a positive number")
    check(_is_num(o["weight_decay"]) and o["weight_decay"] >= 0, where, "optim.weight_decay", o["weight_decay"],
          "expected a number >= 0")
    check(o["lr_base_batch"] is None or (_is_num(o["lr_base_batch"]) and o["lr_base_batch"] > 0), where,
          "optim.lr_base_batch", o["lr_base_batch"], "expected a positive number or null")
    check(isinstance(o["betas"], list | tuple) and len(o["betas"]) == 2
          and all(_is_num(b) and 0 <= b < 1 for b in o["betas"]), where, "optim.betas", o["betas"],
          "expected two numbers in [0, 1)")
    check(isinstance(o["no_decay_1d"], bool), where, "optim.no_decay_1d", o["no_decay_1d"], "expected a bool")
    check(isinstance(o["no_decay_keys"], list) and all(isinstance(k, str) for k in o["no_decay_keys"]), where,
          "optim.no_decay_keys", o["no_decay_keys"], "expected a list of name substrings")
    check(s["name"] in SCHEDULES, where, "sched.name", s["name"], f"expected one of {list(SCHEDULES)}")
    for key in ("warmup_epochs", "warmup_iters", "warmup_lr", "min_lr", "power", "gamma"):
        check(_is_num(s[key]) and s[key] >= 0, where, f"sched.{key}", s[key], "expected a number >= 0")
    check(not (s["warmup_epochs"] and s["warmup_iters"]), where, "sched.warmup_epochs / sched.warmup_iters",
          [s["warmup_epochs"], s["warmup_iters"]], "give at most one of them")
    check(s["warmup_ratio"] is None or (_is_num(s["warmup_ratio"]) and 0 <= s["warmup_ratio"] <= 1), where,
          "sched.warmup_ratio", s["warmup_ratio"], "expected a number in [0, 1] or null")
    check(isinstance(s["steps"], list) and all(_is_num(v) and v >= 0 for v in s["steps"]), where, "sched.steps",
          s["steps"], "expected a list of epochs or iterations")
    check(_is_num(e["decay"]) and 0 < e["decay"] < 1, where, "ema.decay", e["decay"], "expected a number in (0, 1)")
    for key in ("enabled", "warmup", "eval"):
        check(isinstance(e[key], bool), where, f"ema.{key}", e[key], "expected true or false")
    check(_is_int(c["every"]) and c["every"] >= 1, where, "checkpoint.every", c["every"], "expected an integer >= 1")
    check(_positive_int_or_none(c["keep_last"]), where, "checkpoint.keep_last", c["keep_last"],
          "expected an integer >= 1, or null to keep all")
    check(isinstance(c["best_metric"], str) and c["best_metric"], where, "checkpoint.best_metric",
          c["best_metric"], "expected a metric name such as val_top1")
    check(ev["split"] in ("train", "val", "test"), where, "eval.split", ev["split"], "expected train, val or test")
    check(_positive_int_or_none(ev["batch_size"]), where, "eval.batch_size", ev["batch_size"],
          "expected an integer >= 1 or null")
    check(ev["num_workers"] is None or (_is_int(ev["num_workers"]) and ev["num_workers"] >= 0), where,
          "eval.num_workers", ev["num_workers"], "expected an integer >= 0 or null")


def load_config(source: str | os.PathLike | Mapping | None, overrides: Sequence[str] | None = None, *,
                task_defaults: Mapping, validate: Callable[[dict, str], None] | None = None) -> dict:
    """Engine defaults <- the task's defaults <- recipe (file or mapping) <- `--set` overrides, validated.

    `task_defaults` is the task's part of the schema in recipe layout (its own sections and any engine
    default it changes); `validate(cfg, where)` checks the task's sections.
    """
    cfg = merge(engine_defaults(), task_defaults, strict=False)
    where, name = "recipe", None
    if isinstance(source, Mapping):
        user = copy.deepcopy(dict(source))
        user.pop("base", None)
    elif source is not None:
        where, name = str(source), Path(source).stem
        user = read_recipe(source)
    else:
        user = {}
    task = cfg["task"]
    got = user.get("task", task)
    if got != task:
        raise ConfigError(f"{where}: a '{got}' recipe cannot be used for the {task} task")
    defaults, free = cfg, free_sections(cfg)
    cfg = merge(cfg, user, where=where, free=free)
    cfg = apply_overrides(cfg, overrides, free)
    check_types(cfg, defaults, where)
    validate_engine(cfg, where)
    if validate is not None:
        validate(cfg, where)
    if cfg["out_dir"] is None and name:
        cfg["out_dir"] = str(Path("runs") / name)
    return cfg


def resolve_out_dir(cfg: Mapping, out: str | os.PathLike | None) -> Path:
    """`--out` wins over the recipe's `out_dir`; one of them is needed."""
    chosen = out or cfg.get("out_dir")
    if not chosen:
        raise ConfigError("no output directory: pass --out DIR or set out_dir in the recipe")
    return Path(expand_path(str(chosen)))


def dump_config(cfg: Mapping, path: str | os.PathLike) -> None:
    """Write the resolved recipe next to the run's outputs (atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    os.replace(tmp, path)
