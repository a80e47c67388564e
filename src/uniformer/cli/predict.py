"""`uniformer predict`: classes of images and videos, or detection / segmentation / pose pictures and JSON.

The task comes from the checkpoint (`--task` only for an original toolbox file); `--model NAME.TAG` alone
predicts with released weights from the hub.
"""
from __future__ import annotations

import argparse
import sys

from .common import add_device_options, add_open_options, check_device, parse_pairs, print_json


def _print_predictions(results: list[dict]) -> None:
    for r in results:
        print(r["input"])
        if r["error"]:
            print(f"  error: {r['error']}")
            continue
        for rank, p in enumerate(r["predictions"], 1):
            print(f"  {rank}. {p['label']:<32} {p['prob']:.4f}")
        if r.get("figure"):
            print(f"  picture: {r['figure']}")


def _expand(inputs: list[str], videos: bool) -> list[str]:
    """Files of `inputs`, a folder standing for its images (and videos, for classification), sorted."""
    from pathlib import Path

    from uniformer.tasks.classification.predict import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    known = IMAGE_EXTENSIONS + (VIDEO_EXTENSIONS if videos else ())
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(q) for q in p.iterdir() if q.is_file() and q.suffix.lower() in known)
            if not found:
                raise ValueError(f"{item}: a folder with no {'image or video' if videos else 'image'} files "
                                 f"({', '.join(known)})")
            out += found
        else:
            out.append(item)
    return out


def run(args: argparse.Namespace) -> int:
    from uniformer.tasks import open as open_checkpoint

    check_device(args.device)

    def check(the_task) -> None:  # before any weights are loaded
        task = the_task.name
        if args.topk is not None and task != "classification":
            raise ValueError(f"--topk does not apply to {task} checkpoints")
        if args.score_thr is not None and task != "detection":
            raise ValueError(f"--score-thr does not apply to {task} checkpoints")
        if (args.boxes or args.detector) and task != "pose":
            raise ValueError(f"--boxes / --detector give person boxes to a pose model, not to a {task} one")
        if args.boxes and args.detector:
            raise ValueError("--boxes and --detector both give the person boxes: choose one")

    opened = open_checkpoint(args.checkpoint, model=args.model, recipe=args.config, task=args.task,
                             model_options=parse_pairs(args.option, "-o"), labels=args.labels,
                             data=parse_pairs(args.data, "--data"), use_ema=args.ema, device=args.device,
                             dtype=args.dtype, runtime=args.runtime or "torch", check=check)
    task = opened.task.name
    inputs = _expand(args.inputs, videos=task == "classification")
    if task == "pose" and not (args.boxes or args.detector):
        print("pose: no --boxes or --detector, so each whole image is taken as one person's box", file=sys.stderr)
    options = {"topk": args.topk, "score_thr": args.score_thr}
    if args.boxes:
        from uniformer.tasks.pose import read_person_boxes

        options["boxes"] = read_person_boxes(args.boxes, inputs)
    elif args.detector:
        from uniformer.tasks.pose import boxes_from_detector

        detector = open_checkpoint(args.detector, task="detection", device=args.device)
        options["boxes"] = boxes_from_detector(detector, inputs)
    if task == "classification":
        results = opened.predict(inputs, args.out, **options)
        print_json(results) if args.json else _print_predictions(results)
        return 0 if all(r["error"] is None for r in results) else 1
    out = args.out or "predictions"
    results = opened.predict(inputs, out, **options)
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
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, or folders of them")
    p.add_argument("--checkpoint", help="a run checkpoint (it records its task and recipe), an original "
                   "checkpoint (with a tagged --model: these weights instead of the hub's), or a tag NAME.TAG")
    add_open_options(p)
    p.add_argument("--topk", type=int, help="classification: how many classes to show (default 5)")
    p.add_argument("--out", help="classification: write a picture per input (sampled frames and top-5 bars) here; "
                   "detection/segmentation/pose: output folder (default: predictions)")
    p.add_argument("--score-thr", type=float, help="detection: smallest score drawn and listed (default 0.3)")
    p.add_argument("--boxes", metavar="FILE", help="pose: person boxes, a COCO detections JSON (image_id matched "
                   "to numeric file names as in COCO, or file_name) or {file name: [[x, y, w, h(, score)], ...]}")
    p.add_argument("--detector", metavar="CHECKPOINT", help="pose: find the person boxes with this detection "
                   "checkpoint of the package first (its person class, else every class; score >= 0.3)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_device_options(p, progress=False)
    p.add_argument("--runtime", choices=["torch", "onnxruntime", "openvino"],
                   help="classification: run the model's ONNX / OpenVINO export (pip install 'uniformer[deploy]'; "
                        "default: torch)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                   help="classification: auto (default): bfloat16 autocast on GPUs and on CPUs with bfloat16 units, "
                        "else float32")
    p.set_defaults(func=run)
