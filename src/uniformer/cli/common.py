"""What several commands share: KEY=VALUE options, device and progress flags, JSON printing."""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence


def parse_pairs(pairs: Sequence[str] | None, flag: str) -> dict:
    """`KEY=VALUE` pairs with YAML values (`-o depths=[1,1,1,1]`, `--data num_frames=8`) as a dict."""
    from uniformer.engine.config import parse_yaml  # YAML that reads 1e-4 as a number

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = parse_yaml(value)
    return out


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="model argument, YAML value (repeatable), e.g. -o features_only=true -o stage3=hybrid")


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (default: the GPU if any), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def print_json(result) -> None:
    print(json.dumps(result, indent=2, default=str))


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def task_module(name: str):
    """The module of a dense task (`detection`, `segmentation`, `pose`)."""
    import importlib

    return importlib.import_module(f"uniformer.tasks.{name}")


DENSE_TASKS = ("detection", "segmentation", "pose")
