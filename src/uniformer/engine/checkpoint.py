"""Run checkpoints: one format for every task (`Runner._state`), atomic writes, retention, `--resume auto`.

A checkpoint survives a kill at any instant (written to a temporary file, then `os.replace`d) and loads with
`torch.load(weights_only=True)`. `open_checkpoint` is the one reader of weights files (also of the earlier
layouts: classification version 1 and the dense tasks' "uniformer-dense"); `load_run_weights` the one loader
of a run checkpoint's model or EMA weights.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uniformer.models.checkpoint import CheckpointError, key_listing, read_checkpoint

CHECKPOINT_FORMAT = "uniformer-train"
CHECKPOINT_VERSION = 2
_DENSE_FORMAT = "uniformer-dense"  # the dense tasks' layout before the one engine (read only)
_PERIODIC_FILE = re.compile(r"^checkpoint_(epoch|iter)(\d+)\.pt$")
_logger = logging.getLogger("uniformer.engine.checkpoint")


def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """Copy `obj` into types `torch.load(weights_only=True)` accepts; raise TypeError naming anything else."""
    if obj is None or isinstance(obj, bool | int | float | str | torch.Tensor | torch.dtype | torch.device):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} cannot be saved; use str or int keys")
            out[k] = to_plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, list | tuple):
        plain = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return plain if isinstance(obj, list) else tuple(plain)
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__name__} cannot go into a checkpoint that "
                    "loads with torch.load(weights_only=True); convert it to plain data first")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to a temporary sibling, fsync, then rename over `path` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def capture_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states as plain data."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(words), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: Mapping) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available() \
            and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _upgrade(obj: Any) -> dict | None:
    """`obj` in the current layout, or None when it is not a checkpoint of this package."""
    if not isinstance(obj, Mapping):
        return None
    if obj.get("format") == CHECKPOINT_FORMAT and obj.get("version") == CHECKPOINT_VERSION:
        return dict(obj)
    if obj.get("format") == CHECKPOINT_FORMAT:  # version 1: classification only
        meta = {key: obj.get(key) for key in ("classes", "num_classes", "model_spec")}
        return {"format": CHECKPOINT_FORMAT, "version": 1, "task": "classification", "config": obj.get("config"),
                "meta": meta, "model": obj["model"], "ema": obj.get("ema"), "step": obj.get("global_step", 0),
                "history": obj.get("history", [])}
    if obj.get("format") == _DENSE_FORMAT:
        return {"format": _DENSE_FORMAT, "version": 1, "task": obj.get("task"), "config": obj.get("config"),
                "meta": dict(obj.get("meta") or {}), "model": obj["model"], "ema": None,
                "step": obj.get("iter", 0), "history": obj.get("history", [])}
    return None


@dataclass(frozen=True)
class CheckpointFile:
    """A weights file read once. `kind` "run": a checkpoint of this package (`run`: in the current layout);
    "original": another layout (`obj`: what it unpickled to); "safetensors": the project's own format."""

    path: Path
    kind: str
    obj: Any
    meta: Mapping = field(default_factory=dict)
    run: dict | None = None

    @property
    def task(self) -> str | None:
        return self.run["task"] if self.run is not None else None


def open_checkpoint(path: str | os.PathLike) -> CheckpointFile:
    """Read any weights file once, without executing pickled code (`uniformer.models.checkpoint.read_checkpoint`),
    and say what it is. Raises FileNotFoundError, or CheckpointError naming the file and what is wrong."""
    path = Path(path)
    obj, meta = read_checkpoint(path)
    if path.suffix == ".safetensors":
        return CheckpointFile(path, "safetensors", obj, meta)
    run = _upgrade(obj)
    return CheckpointFile(path, "run" if run is not None else "original", obj, meta, run)


def as_checkpoint(source: str | os.PathLike | CheckpointFile) -> CheckpointFile:
    """`source` itself when already read, else `open_checkpoint(source)`."""
    return source if isinstance(source, CheckpointFile) else open_checkpoint(source)


def _run(ckpt: CheckpointFile) -> dict:
    if ckpt.run is None:
        raise ValueError(f"{ckpt.path}: not a checkpoint of a uniformer run (no format={CHECKPOINT_FORMAT!r} entry)")
    return ckpt.run


def load_run_weights(model: torch.nn.Module, source: str | os.PathLike | CheckpointFile, *, task: str | None = None,
                     use_ema: bool = False) -> dict:
    """The one loader of run checkpoints: the model (or EMA) weights of `source` into `model`, strictly. Raises
    ValueError naming the file and the missing / unexpected keys on a misfit, another task's checkpoint, or EMA
    weights asked of a run that kept none. Returns the checkpoint in the current layout."""
    ckpt = as_checkpoint(source)
    run = _run(ckpt)
    if task is not None and run["task"] != task:
        raise ValueError(f"{ckpt.path}: this is a {run['task']} checkpoint, not a {task} one")
    state = run["model"]
    if use_ema:
        if not run.get("ema"):
            raise ValueError(f"{ckpt.path}: asked for EMA weights, but the run kept no EMA (ema.enabled was false)")
        state = run["ema"]["module"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt.path} does not fit the model: missing keys {key_listing(sorted(missing))}, "
                         f"unexpected keys {key_listing(sorted(unexpected))} (a {run['task']} checkpoint: "
                         "was it trained with another model section?)")
    return run


def load_run_checkpoint(path: str | os.PathLike) -> dict:
    """A resumable checkpoint of this engine; ValueError naming the file when it is unreadable or of another kind."""
    try:
        ckpt = open_checkpoint(path)
    except CheckpointError as e:  # truncated file, disk full while writing, refused pickle, ...
        raise ValueError(f"cannot be read as a run checkpoint: {e}") from None
    run = _run(ckpt)
    if run.get("version") != CHECKPOINT_VERSION or "optimizer" not in run:
        raise ValueError(f"{ckpt.path}: a {run['task']} checkpoint of an earlier release holds weights only; "
                         "it can be evaluated or used as model.checkpoint, but not resumed")
    return run


class CheckpointManager:
    """The checkpoints of one run folder: `last.pt`, `best.pt` and periodic `checkpoint_<unit>NNNNNNN.pt`
    files, of which the newest `keep_last` are kept."""

    def __init__(self, folder: str | os.PathLike, keep_last: int | None = 2, unit: str = "epoch"):
        self.folder = Path(folder)
        self.keep_last, self.unit = keep_last, unit
        self.last_path, self.best_path = self.folder / "last.pt", self.folder / "best.pt"

    def periodic_path(self, count: int) -> Path:
        return self.folder / f"checkpoint_{self.unit}{count:07d}.pt"

    def periodic(self) -> list[Path]:
        """Periodic checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(2)), p) for p in self.folder.iterdir() if (m := _PERIODIC_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def candidates(self) -> list[Path]:
        """Resumable files, newest first (by modification time; `last.pt` wins a tie)."""
        files = self.periodic() + ([self.last_path] if self.last_path.is_file() else [])
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.pt"), reverse=True)

    def latest(self) -> Path | None:
        return next(iter(self.candidates()), None)

    def load_latest(self) -> tuple[Path, dict] | None:
        """The newest checkpoint that can be read; an unreadable one (truncated copy, full disk) is skipped
        with a warning naming it. None when the folder holds none."""
        bad = []
        for path in self.candidates():
            try:
                return path, load_run_checkpoint(path)
            except ValueError as e:
                _logger.warning("--resume auto: skipping %s, which cannot be used (%s)", path, e)
                bad.append(path)
        if bad:
            raise ValueError(f"--resume auto: no checkpoint in {self.folder} can be read "
                             f"({', '.join(p.name for p in bad)})")
        return None

    def save(self, state: Mapping, count: int | None) -> Path:
        """Write `last.pt`, and a periodic copy for `count` (epochs or iterations) when given."""
        plain = to_plain(dict(state))
        path = atomic_save(plain, self.last_path)
        if count is not None:
            periodic = self.periodic_path(count)
            tmp = periodic.with_name(f".{periodic.name}.tmp{os.getpid()}")
            try:  # the same bytes: a second name for last.pt's file instead of a second write
                tmp.unlink(missing_ok=True)
                os.link(path, tmp)
                os.replace(tmp, periodic)
            except OSError:
                atomic_save(plain, periodic)
            if self.keep_last:
                for old in self.periodic()[:-self.keep_last]:
                    old.unlink(missing_ok=True)
        return path

    def save_best(self, state: Mapping) -> Path:
        return atomic_save(to_plain(dict(state)), self.best_path)
