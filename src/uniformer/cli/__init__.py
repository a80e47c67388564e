"""The `uniformer` command line (also `python -m uniformer.cli`, e.g. under torchrun). Each sub-command is a
module here with `register(subparsers)` and `run(args)`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import benchmark, convert, demo, export, info, models, predict, serve, train
from . import eval as eval_command

__all__ = ["main", "build_parser"]

COMMANDS = (models, info, benchmark, export, convert, train, eval_command, predict, demo, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uniformer", description="UniFormer models, training and inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from uniformer.engine.reporting import TqdmHandler
    from uniformer.engine.runner import NonFiniteLossError
    from uniformer.models.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s",
                        handlers=[TqdmHandler()])
    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
