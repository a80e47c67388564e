"""Recipes as YAML, one schema for every task: defaults <- `base:` files <- the recipe <- `--set key=value`.

A recipe is one YAML mapping with a `task:` (classification, detection, segmentation, pose). The
engine owns the sections every task shares; the task adds its own (`model`, `data`, `test`) and
may change engine defaults. Every key must exist in these defaults, so a typo fails at start-up
with the file (or `--set`) and the dotted key named; a mapping whose default is empty (`{}`, e.g.
`model.kwargs`) is free-form and checked by its owner. A key given twice in one YAML mapping is
an error. Types and ranges of the engine's keys are checked here, the task's by the task.

The engine's sections and their defaults: `engine_defaults` (what each key means: README, Recipes).
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


def _int_at_least(low: int, null: bool = False) -> Callable[[Any], bool]:
    return lambda v: (null and v is None) or (_is_int(v) and v >= low)


# (dotted keys, what they accept, what is expected) of the engine's sections
_ENGINE_RULES = (
    ("seed train.num_workers", _int_at_least(0), "expected an integer >= 0"),
    ("deterministic train.pin_memory optim.no_decay_1d ema.enabled ema.warmup ema.eval",
     lambda v: isinstance(v, bool), "expected true or false"),
    ("train.epochs train.iters train.max_steps_per_epoch train.eval_every train.threads train.prefetch_factor "
     "eval.batch_size", _int_at_least(1, null=True), "expected an integer >= 1 or null"),
    ("train.batch_size train.accum_steps train.log_every checkpoint.every", _int_at_least(1),
     "expected an integer >= 1"),
    ("train.amp", lambda v: v in AMP_MODES, f"expected one of {list(AMP_MODES)}"),
    ("train.clip_grad optim.lr_base_batch", lambda v: v is None or (_is_num(v) and v > 0),
     "expected a positive number or null"),
    ("train.sync_bn", lambda v: v is None or isinstance(v, bool) or (isinstance(v, list) and v and all(
        isinstance(n, str) and n for n in v)), "expected true, false (or null) or a list of the model's part names"),
    ("optim.name", lambda v: v == "adamw", "only 'adamw' is supported"),
    ("optim.lr optim.eps", lambda v: _is_num(v) and v > 0, "expected a positive number"),
    ("optim.weight_decay sched.warmup_epochs sched.warmup_iters sched.warmup_lr sched.min_lr sched.power sched.gamma",
     lambda v: _is_num(v) and v >= 0, "expected a number >= 0"),
    ("optim.betas", lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v),
     "expected two numbers in [0, 1)"),
    ("optim.no_decay_keys", lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v),
     "expected a list of name substrings"),
    ("sched.name", lambda v: v in SCHEDULES, f"expected one of {list(SCHEDULES)}"),
    ("sched.warmup_ratio", lambda v: v is None or (_is_num(v) and 0 <= v <= 1), "expected a number in [0, 1] or null"),
    ("sched.steps", lambda v: isinstance(v, list) and all(_is_num(n) and n >= 0 for n in v),
     "expected a list of epochs or iterations"),
    ("ema.decay", lambda v: _is_num(v) and 0 < v < 1, "expected a number in (0, 1)"),
    ("checkpoint.keep_last", _int_at_least(1, null=True), "expected an integer >= 1, or null to keep all"),
    ("checkpoint.best_metric", lambda v: isinstance(v, str) and v, "expected a metric name such as val_top1"),
    ("eval.split", lambda v: v in ("train", "val", "test"), "expected train, val or test"),
    ("eval.num_workers", _int_at_least(0, null=True), "expected an integer >= 0 or null"),
)


def validate_engine(cfg: dict, where: str) -> None:
    """Types and ranges of the engine's sections."""
    t, s = cfg["train"], cfg["sched"]
    check((t["epochs"] is None) != (t["iters"] is None), where, "train.epochs / train.iters",
          [t["epochs"], t["iters"]], "give exactly one of them (set the other to null)")
    for keys, accepts, what in _ENGINE_RULES:
        for key in keys.split():
            section, _, name = key.rpartition(".")
            value = (cfg[section] if section else cfg)[name]
            check(accepts(value), where, key, value, what)
    check(not (s["warmup_epochs"] and s["warmup_iters"]), where, "sched.warmup_epochs / sched.warmup_iters",
          [s["warmup_epochs"], s["warmup_iters"]], "give at most one of them")


def load_config(source: str | os.PathLike | Mapping | None, overrides: Sequence[str] | None = None, *,
                task_defaults: Mapping, validate: Callable[[dict, str], None] | None = None) -> dict:
    """Engine defaults <- `task_defaults` (the task's sections and engine defaults it changes) <- recipe (file
    or mapping) <- `--set` overrides, validated (`validate(cfg, where)`: the task's sections)."""
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
