"""`uniformer train`: train any task from a YAML recipe (also under torchrun)."""
from __future__ import annotations

import argparse

from .common import add_device_options, check_device, is_main_process, print_json


def run(args: argparse.Namespace) -> int:
    from uniformer.engine import resolve_out_dir
    from uniformer.tasks import load_recipe, train

    check_device(args.device)
    cfg = load_recipe(args.config, args.set)
    out = resolve_out_dir(cfg, args.out)
    cfg["out_dir"] = str(out)
    summary = train(cfg, out, resume=args.resume, device=args.device, show_progress=not args.no_progress)
    if is_main_process():
        print_json({k: v for k, v in summary.items() if isinstance(v, int | float | str | type(None))})
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML recipe of any task (also under torchrun)",
                       description="Train a model from a YAML recipe; see configs/.")
    p.add_argument("config", help="YAML recipe, e.g. configs/classification/uniformer_s16x4_k400.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe key (dotted, YAML value; repeatable), e.g. --set optim.lr=5e-4")
    p.add_argument("--out", help="output folder (default: the recipe's out_dir, else runs/<recipe name>)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue from the newest readable checkpoint in the output folder (if any); "
                        "or a checkpoint")
    add_device_options(p)
    p.set_defaults(func=run)
