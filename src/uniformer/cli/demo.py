"""`uniformer demo`: generate built-in data, train a small model on it, evaluate, predict."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from uniformer.tasks.classification.demo import DEFAULT_DEMO_CACHE, demo_recipe
from uniformer.tasks.classification.predict import load_predictor, predict_files

from .common import DENSE_TASKS, add_device_options, print_json, task_module


def run(args: argparse.Namespace) -> int:
    if args.task in DENSE_TASKS:
        out = Path(args.out if args.out != "demo_out" else f"demo_{args.task}")
        print_json(task_module(args.task).demo(out, data_dir=args.data_root, overrides=args.set or ()))
        return 0
    from uniformer.data import generate_demo_dataset
    from uniformer.engine import evaluate_checkpoint, load_config, train

    start = time.perf_counter()
    out = Path(args.out)
    root = Path(os.path.expanduser(args.data_root or os.environ.get("UNIFORMER_DEMO_DATA", DEFAULT_DEMO_CACHE)))
    print(f"demo data: {root} (generated once, then reused)")
    data = generate_demo_dataset(root)
    overrides = list(args.set or [])
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    cfg = load_config(None, overrides, base=demo_recipe(data))
    cfg["out_dir"] = str(out)
    summary = train(cfg, out, resume="auto", device=args.device, show_progress=not args.no_progress)
    checkpoint = Path(summary["checkpoint"])
    result = evaluate_checkpoint(cfg, checkpoint, split="val", device=args.device, output=out / "eval_val.json",
                                 show_progress=False)
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics.update({"val_top1": result["top1"], "val_top5": result["top5"],
                    "val_mean_class_acc": result["mean_class_acc"], "checkpoint": str(checkpoint),
                    "wall_seconds": time.perf_counter() - start})
    from uniformer.engine.reporting import write_json

    write_json(metrics_path, metrics)
    print(f"\nval top-1 {result['top1']:.3f}  top-5 {result['top5']:.3f}  mean class acc "
          f"{result['mean_class_acc']:.3f}  ({result['num_samples']} clips)")
    print(f"outputs in {out}: metrics.json, metrics.csv, curves.png, confusion_matrix.png, {checkpoint.name}")
    val_lines = [ln.rsplit(None, 1) for ln in Path(data["val_list"]).read_text().splitlines() if ln.strip()]
    by_class: dict[str, list] = {}
    for entry in val_lines:
        by_class.setdefault(entry[1], []).append(entry)
    picks = [group[i] for i in range(len(val_lines)) for group in by_class.values() if i < len(group)][: args.show]
    predictor = load_predictor(checkpoint, device=args.device)
    files = [os.path.join(data["root"], p) for p, _ in picks]
    print("\npredictions for a few validation clips:")
    for (p, label), r in zip(picks, predict_files(predictor, files, topk=2)):
        truth = predictor.classes[int(label)]
        if r["error"]:
            print(f"  {p}: error {r['error']}")
            continue
        best = r["predictions"][0]
        mark = "ok " if best["label"] == truth else "MISS"
        print(f"  [{mark}] {p}: predicted {best['label']} ({best['prob']:.2f}), true {truth}")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="generate the built-in dataset, train a small model on it, evaluate, "
                                           "predict")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--data-root", help=f"where the demo videos are cached (default: $UNIFORMER_DEMO_DATA or "
                                       f"{DEFAULT_DEMO_CACHE})")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable)")
    p.add_argument("--show", type=int, default=8, help="how many validation clips to predict at the end")
    p.add_argument("--task", default="classification", choices=("classification",) + DENSE_TASKS,
                   help="which demo: video classification (default), detection, segmentation or pose "
                        "(output folder demo_<task> unless --out is given)")
    add_device_options(p)
    p.set_defaults(func=run)
