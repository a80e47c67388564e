"""Training recipes as YAML: defaults, inheritance (`base:`), `--set key=value` overrides, validation.

A recipe is one YAML mapping. The engine's own sections (`model`, `train`, `optim`, `sched`, `ema`,
`checkpoint`, `eval`) are checked key by key so that a typo fails at start-up with the file or
command-line argument named; the `data:` section belongs to `uniformer.data` (which validates it)
and is passed through untouched, apart from `~` expansion in its path keys.

Schema (defaults in brackets):

    base: other.yaml | [a.yaml, b.yaml]   # recipes this one extends (paths relative to this file)
    description: free text
    seed: [0]                   deterministic: [false]          out_dir: [runs/<config name>]
    model:  name (required), pretrained [false], checkpoint [null], inflate ["average"],
            drop_path_rate [0.0], grad_checkpointing [false], kwargs [{}] (depths, embed_dims, ...)
    data:   see uniformer.data; the engine reads batch_size [8] (per process), num_workers [4],
            pin_memory [true], prefetch_factor, persistent_workers [false], drop_last [true], the
            mixup keys (mixup, cutmix, label_smoothing, ...) through uniformer.data.build_mixup
            (label_smoothing [0] also applies to the plain cross-entropy when Mixup/CutMix are off),
            and builder [null; "package.module:function(data_cfg, split)" for a custom dataset]
    train:  epochs [1], accum_steps [1], amp [auto|none|bf16|fp16], clip_grad [null],
            eval_every [1], max_steps_per_epoch [null], sync_bn [false], log_every [10],
            threads [null = torch's default; intra-op CPU threads of each process]
    optim:  name [adamw], lr [1e-3], lr_base_batch [null: lr used as is; else lr *= batch / lr_base_batch
            with batch = per-process batch x processes x accum_steps], weight_decay [0.05],
            betas [[0.9, 0.999]], eps [1e-8], no_decay_1d [true]
    sched:  name [cosine|constant], warmup_epochs [0], warmup_lr [1e-6], min_lr [1e-6]
    ema:    enabled [false], decay [0.9999], warmup [false], eval [true]
    checkpoint: every [1], keep_last [2], best_metric [val_top1], save_best [true]
    eval:   split [test], batch_size [null = data.batch_size], num_workers [null], use_ema [false]
"""
from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "default_config", "load_config", "recipe_task", "apply_overrides", "validate_config", "merge",
           "dump_config", "resolve_out_dir", "parse_yaml"]

# Sections whose keys are free-form (owned by other modules or by the model).
_OPEN_SECTIONS = ("data",)
_DATA_PATH_KEYS = ("root", "train_list", "val_list", "test_list", "class_names", "labels_file",
                   "train_annotations", "val_annotations", "test_annotations", "train_dir", "val_dir", "test_dir")
AMP_MODES = ("auto", "none", "bf16", "fp16")


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
    """`yaml.safe_load`, except that `1e-4` is a float."""
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A recipe that cannot be used; the message names the file, key or argument at fault."""


def default_config() -> dict:
    """A fresh copy of every engine default (see the module docstring)."""
    return {
        "description": "",
        "seed": 0,
        "deterministic": False,
        "out_dir": None,
        "model": {"name": None, "pretrained": False, "checkpoint": None, "inflate": "average",
                  "drop_path_rate": 0.0, "grad_checkpointing": False, "kwargs": {}},
        "data": {},
        "train": {"epochs": 1, "accum_steps": 1, "amp": "auto", "clip_grad": None, "eval_every": 1,
                  "max_steps_per_epoch": None, "sync_bn": False, "log_every": 10, "threads": None},
        "optim": {"name": "adamw", "lr": 1e-3, "lr_base_batch": None, "weight_decay": 0.05,
                  "betas": [0.9, 0.999], "eps": 1e-8, "no_decay_1d": True},
        "sched": {"name": "cosine", "warmup_epochs": 0, "warmup_lr": 1e-6, "min_lr": 1e-6},
        "ema": {"enabled": False, "decay": 0.9999, "warmup": False, "eval": True},
        "checkpoint": {"every": 1, "keep_last": 2, "best_metric": "val_top1", "save_best": True},
        "eval": {"split": "test", "batch_size": None, "num_workers": None, "use_ema": False},
    }


def merge(base: Mapping, update: Mapping, *, where: str = "config", strict: bool = False, _path: str = "") -> dict:
    """Recursive merge of `update` into a copy of `base`; with `strict`, keys of closed sections must exist."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        dotted = f"{_path}{key}"
        open_section = _path.split(".")[0] in _OPEN_SECTIONS or dotted.startswith("model.kwargs")
        if strict and key not in out and not open_section and dotted not in _OPEN_SECTIONS:
            known = ", ".join(sorted(out)) if out else "none"
            raise ConfigError(f"{where}: unknown key '{dotted}' (known keys here: {known})")
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value, where=where, strict=strict, _path=f"{dotted}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Read a recipe and the recipes it extends (`base:`), earliest first."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: circular 'base:' chain ({' -> '.join(str(p) for p in chain + (path,))})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'base' must be a file name or a list of file names")
    merged: dict = {}
    for b in bases:
        merged = merge(merged, _read_yaml(path.parent / b, chain + (path,)))
    return merge(merged, data)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=5e-4")
    try:
        parsed = parse_yaml(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
    return key.split("."), parsed


def apply_overrides(cfg: Mapping, overrides: list[str] | None) -> dict:
    """Apply `section.key=value` strings (values parsed as YAML) to a copy of `cfg`."""
    out = copy.deepcopy(dict(cfg))
    for item in overrides or []:
        keys, value = _parse_override(item)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        out = merge(out, nested, where=f"--set {item}", strict=True)
    return out


def _expand(value: Any) -> Any:
    return os.path.expandvars(os.path.expanduser(value)) if isinstance(value, str) else value


def _check(cond: bool, where: str, key: str, value: Any, what: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {key} = {value!r} is invalid: {what}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def validate_config(cfg: dict, where: str = "config") -> dict:
    """Check types and ranges of the engine's keys; returns `cfg` with data paths `~`-expanded."""
    m, t, o, s, e, c, ev = (cfg[k] for k in ("model", "train", "optim", "sched", "ema", "checkpoint", "eval"))
    _check(isinstance(m["name"], str) and bool(m["name"]), where, "model.name", m["name"],
           "name a model variant, e.g. uniformer_video_small (or 'package.module:factory')")
    _check(isinstance(m["kwargs"], dict), where, "model.kwargs", m["kwargs"], "expected a mapping")
    _check(_is_num(m["drop_path_rate"]) and 0 <= m["drop_path_rate"] < 1, where, "model.drop_path_rate",
           m["drop_path_rate"], "expected a number in [0, 1)")
    _check(m["checkpoint"] is None or isinstance(m["checkpoint"], str), where, "model.checkpoint",
           m["checkpoint"], "expected a file path or null")
    _check(_is_int(cfg["seed"]) and cfg["seed"] >= 0, where, "seed", cfg["seed"], "expected an integer >= 0")
    _check(isinstance(cfg["deterministic"], bool), where, "deterministic", cfg["deterministic"], "expected a bool")
    _check(isinstance(cfg["data"], dict), where, "data", cfg["data"], "expected a mapping")
    for key in ("epochs", "accum_steps", "eval_every", "log_every"):
        _check(_is_int(t[key]) and t[key] >= 1, where, f"train.{key}", t[key], "expected an integer >= 1")
    _check(t["amp"] in AMP_MODES, where, "train.amp", t["amp"], f"expected one of {list(AMP_MODES)}")
    _check(t["clip_grad"] is None or (_is_num(t["clip_grad"]) and t["clip_grad"] > 0), where, "train.clip_grad",
           t["clip_grad"], "expected a positive number or null")
    _check(t["max_steps_per_epoch"] is None or (_is_int(t["max_steps_per_epoch"]) and t["max_steps_per_epoch"] > 0),
           where, "train.max_steps_per_epoch", t["max_steps_per_epoch"], "expected a positive integer or null")
    _check(t["threads"] is None or (_is_int(t["threads"]) and t["threads"] >= 1), where, "train.threads",
           t["threads"], "expected an integer >= 1 or null")
    _check(o["name"] == "adamw", where, "optim.name", o["name"], "only 'adamw' is supported")
    for key in ("lr", "eps"):
        _check(_is_num(o[key]) and o[key] > 0, where, f"optim.{key}", o[key], "expected a positive number")
    _check(_is_num(o["weight_decay"]) and o["weight_decay"] >= 0, where, "optim.weight_decay", o["weight_decay"],
           "expected a number >= 0")
    _check(o["lr_base_batch"] is None or (_is_num(o["lr_base_batch"]) and o["lr_base_batch"] > 0), where,
           "optim.lr_base_batch", o["lr_base_batch"], "expected a positive number or null")
    _check(isinstance(o["betas"], list | tuple) and len(o["betas"]) == 2 and all(0 <= b < 1 for b in o["betas"]),
           where, "optim.betas", o["betas"], "expected two numbers in [0, 1)")
    _check(s["name"] in ("cosine", "constant"), where, "sched.name", s["name"], "expected 'cosine' or 'constant'")
    for key in ("warmup_epochs", "warmup_lr", "min_lr"):
        _check(_is_num(s[key]) and s[key] >= 0, where, f"sched.{key}", s[key], "expected a number >= 0")
    _check(_is_num(e["decay"]) and 0 < e["decay"] < 1, where, "ema.decay", e["decay"], "expected a number in (0, 1)")
    _check(_is_int(c["every"]) and c["every"] >= 1, where, "checkpoint.every", c["every"], "expected an integer >= 1")
    _check(c["keep_last"] is None or (_is_int(c["keep_last"]) and c["keep_last"] >= 1), where,
           "checkpoint.keep_last", c["keep_last"], "expected an integer >= 1, or null to keep all")
    _check(isinstance(c["best_metric"], str), where, "checkpoint.best_metric", c["best_metric"], "expected a name")
    _check(ev["split"] in ("train", "val", "test"), where, "eval.split", ev["split"], "expected train, val or test")
    data = cfg["data"]
    for key in _DATA_PATH_KEYS:
        if key in data:
            data[key] = _expand(data[key])
    bs = data.get("batch_size", 8)
    _check(_is_int(bs) and bs >= 1, where, "data.batch_size", bs, "expected an integer >= 1")
    nw = data.get("num_workers", 4)
    _check(_is_int(nw) and nw >= 0, where, "data.num_workers", nw, "expected an integer >= 0")
    if m["checkpoint"]:
        m["checkpoint"] = _expand(m["checkpoint"])
    return cfg


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None,
                base: Mapping | None = None) -> dict:
    """Defaults <- recipe file (with its `base:` chain) <- `--set` overrides, validated.

    `path` may be None when `base` (a mapping in recipe layout) provides the recipe instead.
    """
    cfg = default_config()
    if base is not None:
        cfg = merge(cfg, base, where="recipe", strict=True)
    where = "config"
    if path is not None:
        where = str(path)
        cfg = merge(cfg, _read_yaml(Path(path)), where=where, strict=True)
        cfg.setdefault("_name", Path(path).stem)
    cfg = apply_overrides(cfg, overrides)
    name = cfg.pop("_name", None)
    validate_config(cfg, where)
    if cfg["out_dir"] is None and name:
        cfg["out_dir"] = str(Path("runs") / name)
    return cfg


def resolve_out_dir(cfg: Mapping, out: str | os.PathLike | None) -> Path:
    """`--out` wins over the recipe's `out_dir`; one of them is needed."""
    chosen = out or cfg.get("out_dir")
    if not chosen:
        raise ConfigError("no output directory: pass --out DIR or set out_dir in the config")
    return Path(_expand(str(chosen)))


def dump_config(cfg: Mapping, path: str | os.PathLike) -> None:
    """Write the resolved recipe next to the run's outputs (atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    os.replace(tmp, path)


def recipe_task(path: str | os.PathLike) -> str:
    """The `task:` a recipe names (following its `base:` files); classification when none does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    recipe = yaml.safe_load(path.read_text()) or {}
    if "task" in recipe:
        return str(recipe["task"])
    if recipe.get("base"):
        return recipe_task(path.parent / recipe["base"])
    return "classification"
