"""`uniformer demo --task T`: generate T's built-in data, train `configs/T/demo.yaml` with the runner (a run like
any other: `--resume auto`, torchrun, the uniform run folder), evaluate and draw example predictions."""
from __future__ import annotations

import argparse
import os

from .common import add_device_options, check_device, is_main_process


def run(args: argparse.Namespace) -> int:
    from uniformer.tasks import demo_recipe_path, load_recipe, run_demo

    check_device(args.device)  # before the data is generated
    overrides = list(args.set or [])
    if args.epochs:
        overrides += [f"train.epochs={args.epochs}", "train.iters=null"]
    out = args.out or load_recipe(demo_recipe_path(args.task), overrides)["out_dir"]
    data_root = args.data_root or (os.environ.get("UNIFORMER_DEMO_DATA") if args.task == "classification" else None)
    summary = run_demo(args.task, out, data_root=data_root, overrides=overrides, resume=args.resume,
                       device=args.device, show_progress=not args.no_progress, show=args.show)
    if not is_main_process():
        return 0
    bar = "  ".join(f"{k} {summary.get(k) or 0:.3f} (bar {v})" for k, v in summary["bar"].items())
    print(f"\n{args.task} demo: {bar}: {'passed' if summary['passed'] else 'NOT passed'}")
    if args.task == "classification":
        print("\npredictions for a few validation clips:")
        for r in summary["examples"]:
            if r["error"]:
                print(f"  {r['input']}: error {r['error']}")
                continue
            best = r["predictions"][0]
            mark = "ok " if best["label"] == r["true"] else "MISS"
            print(f"  [{mark}] {r['input']}: predicted {best['label']} ({best['prob']:.2f}), true {r['true']}")
    else:
        print(f"example pictures: {len(summary['examples'])} in {os.path.join(out, 'examples')}")
    print(f"outputs in {out}: metrics.json, metrics.csv, curves.png, train.log, last.pt, best.pt; "
          f"finished in {summary['wall_seconds']:.0f}s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="generate built-in data, train a small model of a task on it, evaluate, predict")
    p.add_argument("--task", default="classification", choices=("classification", "detection", "segmentation", "pose"),
                   help="which demo (recipe configs/<task>/demo.yaml): video classification (default), detection, "
                        "segmentation or pose")
    p.add_argument("--out", help="output folder (default: the demo recipe's out_dir, runs/demo_<task>)")
    p.add_argument("--data-root", help="where the demo data is generated and cached (default: the recipe's "
                   "data.root; for classification also $UNIFORMER_DEMO_DATA)")
    p.add_argument("--epochs", type=int, help="train this many epochs instead of the recipe's epochs or iterations")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable)")
    p.add_argument("--resume", metavar="auto|PATH", help="continue a demo run ('auto': the newest checkpoint in --out)")
    p.add_argument("--show", type=int, default=8, help="how many validation samples to predict at the end")
    add_device_options(p)
    p.set_defaults(func=run)
