"""Training checkpoints: atomic writes, retention, discovery for `--resume auto`, RNG state as plain data.

A checkpoint must survive a kill at any instant (written to a temporary file in the same folder,
flushed, then `os.replace`d over the final name) and must load with `torch.load(weights_only=True)`:
it holds only tensors, dicts, lists, tuples, numbers, strings, bools and None. `to_plain` converts
NumPy values and paths and refuses anything else, naming where it sits.

Layout of the dict (format "uniformer-train", version 1):
    model, ema (state dicts or None), optimizer, scheduler, scaler, epoch (completed epochs),
    global_step, rng (one entry per process rank), history (per-epoch metrics), best
    ({metric, value, epoch}), config (the resolved recipe), classes (names), num_classes, model_name.
"""
from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CHECKPOINT_FORMAT", "CheckpointManager", "atomic_save", "to_plain", "capture_rng_state",
           "restore_rng_state", "load_training_checkpoint", "is_training_checkpoint", "find_latest_checkpoint"]

CHECKPOINT_FORMAT = "uniformer-train"
_EPOCH_FILE = re.compile(r"^checkpoint_epoch(\d+)\.pt$")


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
    if isinstance(obj, list):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
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
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


# --- random number generators ----------------------------------------------------------------------
def capture_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states as plain data."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(words), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


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


# --- reading ---------------------------------------------------------------------------------------------
def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def read_training_checkpoint(path: str | os.PathLike) -> dict | None:
    """This engine's checkpoint at `path`, or None when the file holds another layout (an original
    UniFormer checkpoint, for `uniformer.load_checkpoint`). Weights only: no pickled code runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, a foreign pickle, safetensors, ...: not ours
        return None
    return obj if is_training_checkpoint(obj) else None


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """Load one of this engine's checkpoints (weights only; no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, ...
        raise ValueError(f"{path}: cannot be read as a training checkpoint ({type(e).__name__}: {e})") from None
    if not is_training_checkpoint(obj):
        raise ValueError(f"{path}: not a uniformer training checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
                         "load original checkpoints with model.checkpoint / --checkpoint instead")
    return obj


def _epoch_files(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return sorted(found)


def find_latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The epoch checkpoint with the highest epoch in `folder`, or None."""
    files = _epoch_files(Path(folder))
    return files[-1][1] if files else None


class CheckpointManager:
    """Writes `checkpoint_epochNNNN.pt` files and `best.pt` in one folder, keeping the newest `keep_last`."""

    def __init__(self, folder: str | os.PathLike, keep_last: int | None = 2):
        self.folder = Path(folder)
        self.keep_last = keep_last

    def epoch_path(self, epoch: int) -> Path:
        return self.folder / f"checkpoint_epoch{epoch:04d}.pt"

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    def checkpoints(self) -> list[Path]:
        return [p for _, p in _epoch_files(self.folder)]

    def latest(self) -> Path | None:
        return find_latest_checkpoint(self.folder)

    def save(self, state: Mapping, epoch: int) -> Path:
        path = atomic_save(to_plain(dict(state)), self.epoch_path(epoch))
        self._prune()
        return path

    def save_best(self, state: Mapping) -> Path:
        return atomic_save(to_plain(dict(state)), self.best_path)

    def _prune(self) -> None:
        if not self.keep_last:
            return
        files = _epoch_files(self.folder)
        for _, old in files[:-self.keep_last]:
            old.unlink(missing_ok=True)
