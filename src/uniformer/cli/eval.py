"""`uniformer eval`: score a checkpoint of any task on a split, as JSON (the task and recipe come from the
checkpoint; a recipe given replaces the recorded one, and is needed for original toolbox files)."""
from __future__ import annotations

import argparse

from .common import add_device_options, check_device, is_main_process, print_json

_LARGE = ("per_class_acc", "per_class", "confusion", "failures", "skipped", "skipped_images")


def run(args: argparse.Namespace) -> int:
    from uniformer.engine import evaluate_checkpoint
    from uniformer.engine.checkpoint import open_checkpoint
    from uniformer.tasks import task_from_checkpoint

    check_device(args.device)
    overrides = list(args.set or []) + ([f"eval.batch_size={args.batch_size}"] if args.batch_size else [])
    if args.dtype:  # inference precision overrides the recipe's train.amp
        overrides.append("train.amp=" + {"auto": "auto", "float32": "none", "bfloat16": "bf16"}[args.dtype])
    if args.num_workers is not None:
        overrides.append(f"eval.num_workers={args.num_workers}")
    checkpoint = open_checkpoint(args.checkpoint)  # read once: the recipe it records and its weights
    task = task_from_checkpoint(checkpoint, args.config, overrides, args.task)
    result = evaluate_checkpoint(task, checkpoint, split=args.split, device=args.device,
                                 use_ema=True if args.ema else None, output=args.output)
    if is_main_process():
        shown = {k: v for k, v in result.items() if k not in _LARGE}
        shown.update({k: len(result[k]) for k in ("failures", "skipped", "skipped_images") if k in result})
        print_json(shown)
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="metrics of a checkpoint of any task on a split, as JSON")
    p.add_argument("config", nargs="?", help="YAML recipe (default: the one recorded in the checkpoint)")
    p.add_argument("--checkpoint", required=True, help="a run checkpoint, or an original checkpoint with its recipe")
    p.add_argument("--task", choices=("classification", "detection", "segmentation", "pose"),
                   help="only for original toolbox files without a recipe: which task they are")
    p.add_argument("--split", choices=["train", "val", "test"], help="default: the recipe's eval.split")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a run checkpoint")
    p.add_argument("--batch-size", type=int, help="samples per batch (sets eval.batch_size)")
    p.add_argument("--num-workers", type=int, help="data-loading processes (sets eval.num_workers)")
    p.add_argument("--output", help="JSON file (default: eval_<split>.json beside the checkpoint)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 autocast on GPUs and on CPUs with bfloat16 units, else float32 "
                        "(default: the recipe's train.amp, auto unless set)")
    add_device_options(p, progress=False)
    p.set_defaults(func=run)
