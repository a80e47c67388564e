"""`uniformer predict`: classes of images and videos, or detection / segmentation / pose pictures and JSON.

The task comes from the checkpoint; `--task` is needed only for an original toolbox file (default:
classification, with `--model` naming the variant). `--model NAME.TAG` alone predicts with released
weights from the hub, the tag's test recipe and its dataset's class names.
"""
from __future__ import annotations

import argparse
import sys

from .common import check_device, parse_pairs, print_json

# options of one task only: given for another task they are an error, not silently ignored
_CLASSIFICATION_ONLY = {"model": "--model", "labels": "--labels", "topk": "--topk", "data": "--data",
                        "option": "-o"}
_DENSE_ONLY = {"config": "--config"}


def _print_predictions(results: list[dict], stream=None) -> None:
    stream = stream or sys.stdout
    for r in results:
        print(r["input"], file=stream)
        if r["error"]:
            print(f"  error: {r['error']}", file=stream)
            continue
        for rank, p in enumerate(r["predictions"], 1):
            print(f"  {rank}. {p['label']:<32} {p['prob']:.4f}", file=stream)
        if r.get("figure"):
            print(f"  picture: {r['figure']}", file=stream)


def _reject(args: argparse.Namespace, task: str, options: dict) -> None:
    for attr, flag in options.items():
        if getattr(args, attr) not in (None, [], False):
            raise ValueError(f"{flag} does not apply to {task} checkpoints")


def run(args: argparse.Namespace) -> int:
    import importlib

    from uniformer.engine.checkpoint import read_checkpoint

    check_device(args.device)
    recorded = read_checkpoint(args.checkpoint) if args.checkpoint else None
    task = recorded["task"] if recorded is not None else (args.task or "classification")
    if args.task and args.task != task:
        raise ValueError(f"--task {args.task}: {args.checkpoint} is a {task} checkpoint")
    if task == "classification":
        _reject(args, task, _DENSE_ONLY)
        from uniformer.tasks.classification.predict import load_predictor, predict_files

        predictor = load_predictor(args.checkpoint, args.model, args.labels, args.device,
                                   parse_pairs(args.data, "--data"), use_ema=args.ema,
                                   model_options=parse_pairs(args.option, "-o"), runtime=args.runtime or "torch",
                                   dtype=args.dtype or "auto")
        results = predict_files(predictor, args.inputs, args.topk or 5, figures=args.out)
        print_json(results) if args.json else _print_predictions(results)
        return 0 if all(r["error"] is None for r in results) else 1
    if not args.checkpoint:
        raise ValueError(f"{task} needs --checkpoint (released weights by tag are for classification)")
    _reject(args, task, {**_CLASSIFICATION_ONLY, "ema": "--ema", "runtime": "--runtime", "dtype": "--dtype"})
    if task != "detection" and args.score_thr is not None:
        raise ValueError(f"--score-thr does not apply to {task} checkpoints")
    module = importlib.import_module(f"uniformer.tasks.{task}")
    extra = {"score_thr": args.score_thr} if args.score_thr is not None else {}
    out = args.out or "predictions"
    results = module.predict(args.config, args.checkpoint, args.inputs, out, device=args.device, **extra)
    if args.json:
        print_json(results)
    else:
        bad = [r for r in results if "error" in r]
        print(f"{task}: {len(results) - len(bad)} image(s), pictures and JSON in {out}")
        for r in bad:
            print(f"  {r['image']}: error {r['error']}")
    return 0 if all("error" not in r for r in results) else 1


def register(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of images or videos; detection / segmentation / pose pictures")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files (or folders of images)")
    p.add_argument("--checkpoint", help="a run checkpoint (it records its task and recipe), or an original "
                   "checkpoint (with a tagged --model: these weights instead of the hub's)")
    p.add_argument("--task", choices=("classification", "detection", "segmentation", "pose"),
                   help="only for original toolbox files: which task they are (default: classification)")
    p.add_argument("--model", help="classification: NAME.TAG of released weights (fetched from the hub; sets the "
                   "test recipe and class names, see `uniformer models --pretrained`), or the model of an original "
                   "checkpoint (run checkpoints record theirs)")
    p.add_argument("--labels", help="classification: class names, one per line (default: the tag's dataset, or "
                   "those recorded in the checkpoint)")
    p.add_argument("--topk", type=int, help="classification: how many classes to show (default 5)")
    p.add_argument("--data", action="append", metavar="KEY=VALUE",
                   help="classification: test-transform setting of the data pipeline (repeatable), e.g. --data "
                        "num_frames=8 --data test_clips=4")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="classification: model argument of an original checkpoint (repeatable), "
                        "e.g. -o depths=[3,4,8,3]")
    p.add_argument("--ema", action="store_true", help="classification: use the EMA weights of a run checkpoint")
    p.add_argument("--config", help="detection/segmentation/pose: the recipe (default: the checkpoint's; needed "
                   "for original toolbox files)")
    p.add_argument("--out", help="classification: write a picture per input (sampled frames and top-5 bars) here; "
                   "detection/segmentation/pose: output folder (default: predictions)")
    p.add_argument("--score-thr", type=float, help="detection: smallest score drawn and listed (default 0.3)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default=None, help="auto (default: the GPU if any), cpu, cuda, ...")
    p.add_argument("--runtime", choices=["torch", "onnxruntime", "openvino"],
                   help="classification: run the model's ONNX / OpenVINO export (pip install 'uniformer[deploy]'; "
                        "default: torch)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                   help="classification: auto (default): bfloat16 autocast on GPUs and on CPUs with bfloat16 units, "
                        "else float32")
    p.set_defaults(func=run)
