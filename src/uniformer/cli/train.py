"""`uniformer train`: train a model from a YAML recipe (also under torchrun)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from uniformer.engine.config import recipe_task

from .common import DENSE_TASKS, add_device_options, is_main_process, print_json, task_module


def run(args: argparse.Namespace) -> int:
    from uniformer.engine import load_config, resolve_out_dir, train

    task = recipe_task(args.config)
    if task in DENSE_TASKS:
        module = task_module(task)
        out = Path(args.out or Path("runs") / Path(args.config).stem)
        print_json(module.train(module.load_config(args.config, args.set or ()), out, resume=args.resume))
        return 0
    cfg = load_config(args.config, args.set)
    out = resolve_out_dir(cfg, args.out)
    cfg["out_dir"] = str(out)
    summary = train(cfg, out, resume=args.resume, device=args.device, show_progress=not args.no_progress)
    if is_main_process():
        print(json.dumps({k: v for k, v in summary.items() if k not in ("val_per_class_acc", "classes")}, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML recipe (also under torchrun)",
                              description="Train a model from a YAML recipe; see configs/.")
    p.add_argument("config", help="YAML recipe, e.g. configs/k400_uniformer_s16x4.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe key (dotted, YAML value; repeatable), e.g. --set optim.lr=5e-4")
    p.add_argument("--out", help="output folder (default: the recipe's out_dir, else runs/<recipe name>)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue from the newest checkpoint in the output folder (if any); or a checkpoint")
    add_device_options(p)
    p.set_defaults(func=run)
