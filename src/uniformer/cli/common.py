"""What several commands share: model, checkpoint, device and progress flags, the device check, JSON printing."""
from __future__ import annotations

import argparse
import json
import os

from uniformer.engine.config import parse_pairs

__all__ = ["parse_pairs", "add_model_options", "add_open_options", "add_device_options", "check_device",
           "print_json", "is_main_process"]


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="model argument, YAML value (repeatable), e.g. -o features_only=true -o stage3=hybrid")


def add_open_options(p: argparse.ArgumentParser) -> None:
    """What `uniformer.tasks.open` takes besides the checkpoint (`predict`, `serve`)."""
    from uniformer.tasks import TASKS

    p.add_argument("--model", help="classification: NAME.TAG of released weights (fetched from the hub; sets the "
                   "test recipe and class names, see `uniformer models --pretrained`), or the model of an original "
                   "checkpoint (run checkpoints record theirs)")
    p.add_argument("--task", choices=TASKS, help="only for original toolbox files: which task they are (default: "
                   "the task a run checkpoint records, else classification)")
    p.add_argument("--config", help="the recipe (default: the checkpoint's; needed for original detection, "
                   "segmentation and pose toolbox files)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a run checkpoint")
    p.add_argument("--labels", help="classification: class names, one per line (default: the tag's dataset, or "
                   "those recorded in the checkpoint)")
    p.add_argument("--data", action="append", metavar="KEY=VALUE",
                   help="classification: test-transform setting of the data pipeline (repeatable), e.g. --data "
                        "num_frames=8 --data test_clips=4")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="classification: model argument of an original checkpoint (repeatable), "
                        "e.g. -o depths=[3,4,8,3]")


def add_device_options(p: argparse.ArgumentParser, progress: bool = True) -> None:
    p.add_argument("--device", default=None, help="auto (default: the GPU if any), cpu, cuda, cuda:1, ...")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_device(device: str | None) -> None:
    """Fail before any work (data generation included) when `--device` names a device this machine lacks."""
    from uniformer.engine.distributed import resolve_device

    resolve_device(device, int(os.environ.get("LOCAL_RANK", "0") or 0))


def print_json(result) -> None:
    print(json.dumps(result, indent=2, default=str))


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")
