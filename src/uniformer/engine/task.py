"""What a task gives the runner: the `Task` protocol that `uniformer.tasks.<task>` implement.

A task is made from a resolved recipe (`Task(cfg)`, or `Task(cfg, meta)` to rebuild a trained model); the
runner owns devices, processes, precision, optimiser, checkpoints and the run folder.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import Dataset

from uniformer.engine.checkpoint import CheckpointFile


@runtime_checkable
class Task(Protocol):
    name: str          # "classification", "detection", ...
    cfg: dict          # the resolved recipe
    meta: dict         # what rebuilding the model needs besides the recipe (class names, ...); saved in checkpoints
    min_batch: int     # a training batch with fewer usable samples is skipped (2 for BatchNorm heads)

    @staticmethod
    def defaults() -> dict:
        """The task's part of the recipe schema (its sections, and engine defaults it changes)."""

    @staticmethod
    def validate(cfg: dict, where: str) -> None:
        """Check the task's sections of a resolved recipe; raise ConfigError naming the key."""

    def build_datasets(self, splits: Sequence[str]) -> dict[str, Dataset | None]:
        """The datasets of `splits` (None for a split the recipe does not have); fills `meta` from the
        training split."""

    def collate(self, samples: list) -> Any:
        """A batch from dataset items (None when no item of it is usable)."""

    def build_model(self, for_training: bool = True) -> nn.Module:
        """The network for `cfg` and `meta`; for training with the recipe's initial weights."""

    def load_weights(self, model: nn.Module, path: str | Path | CheckpointFile, use_ema: bool = False) -> None:
        """Weights of a run checkpoint (through `engine.checkpoint.load_run_weights`) or of an original toolbox
        file; `path` may be a file already read (`CheckpointFile`), so a file is read once."""

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Named losses (the runner optimises the sum of the `loss*` entries) and other scalars to log."""

    def batch_size(self, batch: Any) -> int:
        """Samples in a batch (0: nothing usable)."""

    def eval_defaults(self) -> tuple[int, int]:
        """(batch size, loading processes) of evaluation when `eval.batch_size` / `eval.num_workers` are null."""

    def eval_collate(self, items: list[tuple[int, Any]]) -> Any:
        """An evaluation batch from (dataset index, item) pairs."""

    def evaluate(self, model: nn.Module, dataset: Dataset, batches: Iterable) -> Any:
        """Predictions of this process's batches (`engine.runner.eval_batches`: `eval_collate` outputs of its
        shard); picklable; the model is in eval mode, gradients off."""

    def merge(self, dataset: Dataset, parts: Sequence[Any]) -> dict:
        """Metrics of the whole split from every process's `evaluate` result."""

    def write_pictures(self, folder: Path, metrics: Mapping, prefix: str = "") -> None:
        """The task's figures of a finished run or evaluation (confusion matrix, ...), file names prefixed."""

    # --- inference (`uniformer.tasks.open` gives the task with its trained model) ---------------------------
    predict_options: tuple[str, ...]  # the keyword options `predict` takes besides `out_dir` (e.g. score_thr)

    def predict(self, model: nn.Module, inputs: Sequence[str | Path], out_dir: str | Path | None = None,
                **options) -> list[dict]:
        """One JSON-able record per input file (an unreadable one gets an `error`); with `out_dir`, the
        pictures `draw` makes and the records as JSON there."""

    def draw(self, image: Any, output: Any) -> Any:
        """The picture (PIL image) of one prediction over its input."""

    # --- demo (`uniformer demo --task <name>`) ----------------------------------------------------------------
    demo_bar: dict  # metric -> the value a demo run must reach

    def prepare_demo(self, root: Path) -> None:
        """Generate the demo recipe's built-in data under `root` (once)."""

    def demo_examples(self, model: nn.Module, out_dir: Path, show: int) -> list[dict]:
        """`predict` on `show` validation samples of the demo data (pictures in `out_dir`)."""
