"""What a run leaves for people: log file, per-epoch CSV and TensorBoard scalars, PNG curves and confusion matrix.

Only the main process writes. The CSV is rewritten from the run's full history (which also lives in
every checkpoint), so a resumed run never duplicates or loses rows; TensorBoard events past the
resume point are purged. Plots use matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

__all__ = ["log_to", "write_history_csv", "TensorBoardLogger", "plot_curves", "plot_confusion_matrix",
           "write_json", "LOGGER_NAME"]

LOGGER_NAME = "uniformer"


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not tear the progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never kill training
            self.handleError(record)


@contextlib.contextmanager
def log_to(out_dir: Path | None, is_main: bool, rank: int = 0) -> Iterator[logging.Logger]:
    """Send the package's log records to stderr (and `out_dir/train.log` on the main process) for a block."""
    logger = logging.getLogger(LOGGER_NAME)
    handlers: list[logging.Handler] = []
    fmt = logging.Formatter(f"%(asctime)s {'' if is_main else f'[rank {rank}] '}%(levelname)s %(message)s",
                            "%Y-%m-%d %H:%M:%S")
    console = _TqdmHandler()
    console.setLevel(logging.INFO if is_main else logging.WARNING)
    handlers.append(console)
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


def write_json(path: str | os.PathLike, obj) -> None:
    """Pretty JSON, written atomically; NaN/inf become null."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, Mapping):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if isinstance(x, torch.Tensor):
            return clean(x.tolist())
        return x
    _atomic_text(Path(path), json.dumps(clean(obj), indent=2) + "\n")


def write_history_csv(history: Sequence[Mapping], path: str | os.PathLike) -> None:
    """One row per epoch; columns = union of keys in first-seen order."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


class TensorBoardLogger:
    """Per-epoch scalars under `out_dir/tensorboard`; events at or after `start_epoch + 1` are purged on resume."""

    def __init__(self, log_dir: Path, start_epoch: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=start_epoch + 1 if start_epoch else None)

    def log_epoch(self, row: Mapping) -> None:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            group = "val" if key.startswith("val_") else "train" if key.startswith("train_") else "misc"
            self.writer.add_scalar(f"{group}/{key}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_curves(history: Sequence[Mapping], path: str | os.PathLike) -> Path | None:
    """Loss, accuracy and learning-rate curves over epochs in one PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        pts = [(r["epoch"], r[key]) for r in history if isinstance(r.get(key), int | float)]
        return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [("loss", ["train_loss", "val_loss", "val_ema_loss"]),
              ("accuracy", ["train_top1", "val_top1", "val_top5", "val_ema_top1"]),
              ("learning rate", ["lr"])]
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            s = series(key)
            if s:
                ax.plot(*s, marker="o" if len(s[0]) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(cm: torch.Tensor, class_names: Sequence[str] | None, path: str | os.PathLike,
                          title: str = "confusion matrix (rows: true class, normalised)") -> Path:
    """Row-normalised confusion matrix as a PNG; class names on the axes when there are few classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = cm.double()
    k = cm.shape[0]
    norm = cm / cm.sum(1, keepdim=True).clamp_min(1)
    size = min(4 + 0.4 * k, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if k <= 40:
        names = list(class_names) if class_names else [str(i) for i in range(k)]
        ax.set_xticks(range(k), names, rotation=90)
        ax.set_yticks(range(k), names)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                            color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
