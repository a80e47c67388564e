"""`uniformer predict`: classes of images and videos, or dense-task pictures and JSON."""
from __future__ import annotations

import argparse
import json
import sys

from uniformer.tasks.classification.predict import load_predictor, predict_files

from .common import DENSE_TASKS, parse_pairs, print_json, task_module


def _print_predictions(results: list[dict], stream=None) -> None:
    stream = stream or sys.stdout
    for r in results:
        print(r["input"], file=stream)
        if r["error"]:
            print(f"  error: {r['error']}", file=stream)
            continue
        for rank, p in enumerate(r["predictions"], 1):
            print(f"  {rank}. {p['label']:<32} {p['prob']:.4f}", file=stream)


def run(args: argparse.Namespace) -> int:
    if args.task in DENSE_TASKS:  # writes a picture and a JSON per image
        module = task_module(args.task)
        cfg = module.load_config(args.config) if args.config else None
        results = module.predict(cfg, args.checkpoint, args.inputs, args.out)
        if args.json:
            print_json(results)
        else:
            print(f"{len(results)} image(s): pictures and JSON in {args.out}")
        return 0
    predictor = load_predictor(args.checkpoint, args.model, args.labels, args.device,
                               parse_pairs(args.data, "--data"), use_ema=args.ema,
                               model_options=parse_pairs(args.option, "-o"), runtime=args.runtime, dtype=args.dtype)
    results = predict_files(predictor, args.inputs, args.topk)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_predictions(results)
    return 0 if all(r["error"] is None for r in results) else 1


def register(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of images or videos")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files")
    p.add_argument("--model", help="model name (recorded in training checkpoints; needed for original ones)")
    p.add_argument("--checkpoint", required=True, help="training checkpoint or original UniFormer checkpoint")
    p.add_argument("--labels", help="class names, one per line (default: those recorded in the checkpoint)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--data", action="append", metavar="KEY=VALUE",
                   help="test-transform setting of the data pipeline (repeatable), e.g. --data num_frames=8 "
                        "--data test_clips=4")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="model argument of an original checkpoint (repeatable), e.g. -o depths=[3,4,8,3]")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, ...")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "openvino"],
                   help="classification: run the model's ONNX / OpenVINO export (pip install 'uniformer[deploy]')")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 autocast on GPUs and on CPUs with bfloat16 units, else float32")
    p.add_argument("--task", default="classification", choices=("classification",) + DENSE_TASKS,
                   help="detection/segmentation/pose: write a picture and a JSON per image")
    p.add_argument("--config", help="with --task: the recipe (default: the one recorded in the checkpoint)")
    p.add_argument("--out", default="predictions", help="with --task: output folder")
    p.set_defaults(func=run)
