"""Recipes of the dense tasks: task defaults <- YAML file (with `base:` files) <- `key=value` overrides.

Every key must exist in the task's defaults, so that a typo fails at start-up with the file (or
override) and the dotted key named, instead of silently training with a default. Mappings whose
default is empty (`{}`), e.g. `model.backbone.kwargs`, are free-form.
"""
from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "load_config", "merge", "apply_overrides", "resolve_path"]


class ConfigError(ValueError):
    """A recipe that cannot be used; the message names the file, key or override at fault."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; recipes mean a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _parse(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def merge(base: Mapping, update: Mapping, *, where: str, strict: bool = True, _path: str = "") -> dict:
    """Copy of `base` updated recursively by `update`; with `strict`, unknown keys raise ConfigError."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        dotted = f"{_path}{key}"
        if strict and key not in out and not (_path and not base):
            known = ", ".join(sorted(map(str, out))) or "none"
            raise ConfigError(f"{where}: unknown key '{dotted}' (known keys here: {known})")
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and out[key]:
            out[key] = merge(out[key], value, where=where, strict=strict, _path=f"{dotted}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: circular 'base:' chain")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _parse(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    bases = [bases] if isinstance(bases, str) else bases
    merged: dict = {}
    for b in bases:
        merged = merge(merged, _read(path.parent / b, chain + (path,)), where=str(path), strict=False)
    merged = merge(merged, data, where=str(path), strict=False)
    return merged


def apply_overrides(cfg: Mapping, overrides: Sequence[str] | None) -> dict:
    """Apply `a.b.c=value` strings (values parsed as YAML) to a copy of `cfg`; unknown keys raise."""
    out = copy.deepcopy(dict(cfg))
    for item in overrides or ():
        key, sep, value = item.partition("=")
        keys = key.strip().split(".")
        if not sep or not all(keys):
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=5e-4")
        try:
            nested: Any = _parse(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
        for k in reversed(keys):
            nested = {k: nested}
        out = merge(out, nested, where=f"override {item}")
    return out


def load_config(source: str | os.PathLike | Mapping | None, overrides: Sequence[str] | None = None, *,
                defaults: Mapping, task: str) -> dict:
    """Resolve a recipe for `task`: defaults <- file or mapping <- overrides.

    Relative data paths are kept as written; `resolve_path(cfg, p)` resolves them against
    `data.root`, itself relative to the working directory (as in the original toolboxes).
    """
    cfg = copy.deepcopy(dict(defaults))
    where = "config"
    if isinstance(source, Mapping):
        user = copy.deepcopy(dict(source))
    elif source is not None:
        where = str(source)
        user = _read(Path(source))
    else:
        user = {}
    user.pop("base", None)
    got = user.get("task", task)
    if got != task:
        raise ConfigError(f"{where}: a '{got}' recipe cannot be used for the {task} task")
    cfg = merge(cfg, user, where=where)
    cfg = apply_overrides(cfg, overrides)
    cfg["task"] = task
    return cfg


def resolve_path(cfg: Mapping, path: str | os.PathLike | None) -> Path | None:
    """`path` relative to `data.root` (absolute and `~` paths are kept)."""
    if path is None:
        return None
    p = Path(os.path.expandvars(os.path.expanduser(str(path))))
    root = cfg.get("data", {}).get("root")
    if p.is_absolute() or root is None:
        return p
    return Path(os.path.expanduser(str(root))) / p
