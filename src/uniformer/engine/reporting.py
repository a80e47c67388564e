"""What a run leaves for people: log file, resolved recipe, per-step CSV and TensorBoard scalars, PNG curves, JSON.

The CSV is rewritten from the run's full history (kept in every checkpoint), so a resumed run never
duplicates or loses rows; TensorBoard events past the resume point are purged.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

LOGGER_NAME = "uniformer"


class TqdmHandler(logging.Handler):
    """Log lines that do not tear progress bars apart, written to whatever `sys.stderr` is when a record comes
    (a stream kept from the handler's creation may since have been closed by a test runner or notebook)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never kill training
            self.handleError(record)


@contextlib.contextmanager
def log_to(out_dir: Path | None, is_main: bool, rank: int = 0) -> Iterator[logging.Logger]:
    """Send the package's log records to stderr (and `out_dir/train.log` on the main process) for a block."""
    logger = logging.getLogger(LOGGER_NAME)
    fmt = logging.Formatter(f"%(asctime)s {'' if is_main else f'[rank {rank}] '}%(levelname)s %(message)s",
                            "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [TqdmHandler(logging.INFO if is_main else logging.WARNING)]
    if is_main and out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out_dir / "train.log"))
        handlers[-1].setLevel(logging.INFO)
    old_level, old_propagate = logger.level, logger.propagate
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def dump_config(cfg: Mapping, path: str | os.PathLike) -> None:
    """Write the resolved recipe next to the run's outputs (atomically)."""
    _atomic_text(Path(path), yaml.safe_dump(dict(cfg), sort_keys=False))


def write_json(path: str | os.PathLike, obj) -> None:
    """Pretty JSON, written atomically; NaN/inf become null."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, Mapping):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if isinstance(x, torch.Tensor | np.generic | np.ndarray):
            return clean(x.tolist())
        if isinstance(x, os.PathLike):
            return os.fspath(x)
        return x
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_text(path, json.dumps(clean(obj), indent=2) + "\n")


def _columns(history: Sequence[Mapping]) -> list[str]:
    """The union of the rows' keys in first-seen order."""
    return list(dict.fromkeys(k for row in history for k in row))


def write_history_csv(history: Sequence[Mapping], path: str | os.PathLike) -> None:
    """One row per logged step, a column per key of any row."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_columns(history), restval="")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in history)
    _atomic_text(Path(path), text.getvalue())


class TensorBoardLogger:
    """Scalars of each history row under `out_dir/tensorboard`, at its step; on resume, events after
    `start_step` are purged."""

    def __init__(self, log_dir: Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)

    def log(self, row: Mapping) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            group = "val" if key.startswith("val_") else "train" if key.startswith(("train_", "loss")) else "misc"
            self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_curves(history: Sequence[Mapping], path: str | os.PathLike) -> Path | None:
    """Losses, validation metrics and the learning rate over optimiser steps in one PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = _columns(history)
    panels = [("loss", [k for k in keys if "loss" in k]),
              ("validation", [k for k in keys if k.startswith("val_") and "loss" not in k][:8]),
              ("learning rate", ["lr"])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (title, names) in zip(axes, panels):
        for key in names:
            points = [(r["step"], r[key]) for r in history if isinstance(r.get(key), int | float)]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
