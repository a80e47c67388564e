"""What several commands share: device and progress flags, the device check, JSON printing."""
from __future__ import annotations

import argparse
import json
import os

from uniformer.engine.config import parse_pairs

__all__ = ["parse_pairs", "add_model_options", "add_device_options", "check_device", "print_json", "is_main_process"]


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="model argument, YAML value (repeatable), e.g. -o features_only=true -o stage3=hybrid")


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
