"""`uniformer eval`: score a checkpoint on a recipe's data, as JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from uniformer.engine.config import recipe_task

from .common import DENSE_TASKS, add_device_options, is_main_process, print_json, task_module


def run(args: argparse.Namespace) -> int:
    from uniformer.engine import evaluate_checkpoint, load_config

    task = recipe_task(args.config)
    if task in DENSE_TASKS:
        module = task_module(task)
        out = Path(args.output).parent if args.output else None
        print_json(module.evaluate(module.load_config(args.config, args.set or ()), args.checkpoint,
                                    split=args.split or "val", out_dir=out))
        return 0
    cfg = load_config(args.config, args.set)
    if args.dtype:  # inference precision overrides the recipe's train.amp
        cfg["train"]["amp"] = {"auto": "auto", "float32": "none", "bfloat16": "bf16"}[args.dtype]
    result = evaluate_checkpoint(cfg, args.checkpoint, split=args.split, device=args.device,
                                 use_ema=True if args.ema else None, output=args.output, batch_size=args.batch_size,
                                 show_progress=not args.no_progress)
    if is_main_process():
        shown = {k: v for k, v in result.items() if k not in ("per_class_acc", "failures")}
        shown["failures"] = len(result["failures"])
        print(json.dumps(shown, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5/mean class accuracy of a checkpoint (multi-view), as JSON")
    p.add_argument("config", help="YAML recipe naming the model and the data")
    p.add_argument("--checkpoint", required=True, help="training checkpoint or any original UniFormer checkpoint")
    p.add_argument("--split", choices=["train", "val", "test"], help="default: the recipe's eval.split (test)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--batch-size", type=int, help="samples per batch (default: eval.batch_size or data.batch_size)")
    p.add_argument("--output", help="JSON file (default: eval_<split>.json beside the checkpoint)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 autocast on GPUs and on CPUs with bfloat16 units, else float32 "
                        "(default: the recipe's train.amp, auto unless set)")
    add_device_options(p)
    p.set_defaults(func=run)
