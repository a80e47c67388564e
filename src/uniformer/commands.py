"""Command-line handlers for `uniformer train | eval | predict | demo`.

`add_commands(subparsers)` registers the four sub-commands on the main `uniformer` parser (each
sets `func`, a handler taking the parsed arguments and returning an exit code). `main()` runs them
alone, so `python -m uniformer.commands train ...` also works, e.g. under
`torchrun --nproc_per_node N -m uniformer.commands train CONFIG`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "main", "cmd_train", "cmd_eval", "cmd_predict", "cmd_demo", "demo_recipe",
           "predict_files", "load_predictor", "Predictor"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_DEMO_CACHE = "~/.cache/uniformer/demo_data"
# data-pipeline keys that shape the test-time view of a clip (carried over from a training checkpoint)
TRANSFORM_KEYS = ("num_frames", "sampling", "stride", "input_size", "short_side", "test_clips", "test_crops",
                  "mean", "std", "video_ext", "decode_threads")


# --- dense tasks (detection, segmentation, pose) ----------------------------------------------------
DENSE_TASKS = ("detection", "segmentation", "pose")


def recipe_task(path: str | os.PathLike) -> str:
    """The `task:` a recipe names (following its `base:` files); classification when none does."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    recipe = yaml.safe_load(path.read_text()) or {}
    if "task" in recipe:
        return str(recipe["task"])
    if recipe.get("base"):
        return recipe_task(path.parent / recipe["base"])
    return "classification"


def dense_task(name: str):
    import importlib

    return importlib.import_module(f"uniformer.tasks.{name}")


def _print_json(result) -> None:
    print(json.dumps(result, indent=2, default=str))


# --- train / eval -------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from uniformer.engine import load_config, resolve_out_dir, train

    task = recipe_task(args.config)
    if task in DENSE_TASKS:
        module = dense_task(task)
        out = Path(args.out or Path("runs") / Path(args.config).stem)
        _print_json(module.train(module.load_config(args.config, args.set or ()), out, resume=args.resume))
        return 0
    cfg = load_config(args.config, args.set)
    out = resolve_out_dir(cfg, args.out)
    cfg["out_dir"] = str(out)
    summary = train(cfg, out, resume=args.resume, device=args.device, show_progress=not args.no_progress)
    if _is_main_process():
        print(json.dumps({k: v for k, v in summary.items() if k not in ("val_per_class_acc", "classes")}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from uniformer.engine import evaluate_checkpoint, load_config

    task = recipe_task(args.config)
    if task in DENSE_TASKS:
        module = dense_task(task)
        out = Path(args.output).parent if args.output else None
        _print_json(module.evaluate(module.load_config(args.config, args.set or ()), args.checkpoint,
                                    split=args.split or "val", out_dir=out))
        return 0
    cfg = load_config(args.config, args.set)
    result = evaluate_checkpoint(cfg, args.checkpoint, split=args.split, device=args.device,
                                 use_ema=True if args.ema else None, output=args.output, batch_size=args.batch_size,
                                 show_progress=not args.no_progress)
    if _is_main_process():
        shown = {k: v for k, v in result.items() if k not in ("per_class_acc", "failures")}
        shown["failures"] = len(result["failures"])
        print(json.dumps(shown, indent=2))
    return 0


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


# --- predict ------------------------------------------------------------------------------------------
@dataclass
class Predictor:
    """A model ready for inference plus what is needed to read files the way its data pipeline does."""

    model: Any  # torch.nn.Module in eval mode
    classes: list[str]
    data_cfg: dict  # data: section for the pipeline's test transform
    device: Any  # torch.device
    is_video: bool


def _default_data_cfg(is_video: bool) -> dict:
    if is_video:  # the UniFormer Kinetics test view: 16 frames 4 apart, short side 256, centre crop 224
        return {"format": "video_list", "num_frames": 16, "sampling": "dense", "stride": 4, "input_size": 224,
                "short_side": 256, "test_clips": 1, "test_crops": 1}
    return {"format": "image_list", "input_size": 224, "short_side": 256, "test_crops": 1}


def load_predictor(checkpoint: str | os.PathLike, model_name: str | None = None, labels: str | None = None,
                   device: str | None = None, data_overrides: Mapping | None = None, use_ema: bool = False,
                   model_options: Mapping | None = None) -> Predictor:
    """Build the model behind `checkpoint` (a training checkpoint of this engine or any original one).

    `model_options` (depths, embed_dims, ...) describe the architecture of an original checkpoint;
    training checkpoints record theirs. `data_overrides` adjust the test transform (num_frames, ...).
    """

    from uniformer.engine.checkpoint import read_training_checkpoint
    from uniformer.engine.distributed import resolve_device
    from uniformer.tasks.classification import (
        build_model,
        checkpoint_num_classes,
        load_weights,
        model_input_ndim,
        read_class_names,
    )

    path = Path(checkpoint)
    obj = read_training_checkpoint(path)
    if obj is not None:
        spec = obj["model_spec"]
        if model_name and model_name != spec["name"]:
            raise ValueError(f"--model {model_name}: {path} was trained as {spec['name']}")
        if model_options:
            raise ValueError(f"-o model options are for original checkpoints; {path} records its architecture "
                             f"({spec['kwargs']})")
        model_cfg = {"name": spec["name"], "kwargs": spec["kwargs"]}
        num_classes = int(obj["num_classes"])
        classes = list(obj.get("classes") or [])
        recorded = (obj.get("config") or {}).get("data", {})
        data_cfg = {} if recorded.get("builder") else {k: v for k, v in recorded.items()
                                                       if k in TRANSFORM_KEYS or k == "format"}
    else:
        if not model_name:
            raise ValueError(f"--model is needed: {path} is not a training checkpoint of this engine, so it does "
                             "not record which model it holds")
        model_cfg = {"name": model_name, "kwargs": dict(model_options or {})}
        num_classes = checkpoint_num_classes(path)
        if num_classes is None:
            raise ValueError(f"{path} has no classifier ('head.weight'); predict needs a classification checkpoint")
        classes, data_cfg = [], {}
    if labels:
        classes = read_class_names(labels, expected=num_classes)
    if len(classes) != num_classes:
        classes = [f"class_{i}" for i in range(num_classes)]
    model = build_model(model_cfg, num_classes, for_training=False)
    load_weights(model, path, use_ema=use_ema)
    dev = resolve_device(device)
    model.to(dev).eval()
    is_video = model_input_ndim(model) == 5
    fmt = data_cfg.get("format")
    if fmt is not None and (fmt in ("video_list", "sthv2")) != is_video:
        data_cfg = {}
    cfg = {**_default_data_cfg(is_video), **{k: v for k, v in data_cfg.items() if k != "format"}}
    cfg["format"] = "video_list" if is_video else "image_list"
    cfg.update(dict(data_overrides or {}))
    return Predictor(model, classes, cfg, dev, is_video)


def _kind_of(path: str) -> str:
    ext = Path(path).suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return "unknown"


def predict_files(predictor: Predictor, inputs: Sequence[str], topk: int = 5) -> list[dict]:
    """Top-k classes with probabilities for each image or video file (the test-split transform of the
    data pipeline: multi-view inputs are averaged over views). Unreadable inputs get an `error`."""
    import torch

    from uniformer.data import build_dataset
    from uniformer.tasks.classification import model_input_ndim, view_logits

    results: list[dict] = [{"input": p, "predictions": [], "error": None} for p in inputs]
    wanted = "video" if predictor.is_video else "image"
    todo: list[int] = []
    for i, p in enumerate(inputs):
        kind = _kind_of(p)
        if not Path(p).is_file():
            results[i]["error"] = "file not found"
        elif kind != wanted:
            results[i]["error"] = (f"the model is a {wanted} model but this is "
                                   f"{'an unrecognised file type' if kind == 'unknown' else f'a {kind}'}"
                                   f" (known {wanted} extensions: "
                                   f"{', '.join(VIDEO_EXTENSIONS if wanted == 'video' else IMAGE_EXTENSIONS)})")
        else:
            todo.append(i)
    if not todo:
        return results
    k = min(topk, len(predictor.classes))
    with tempfile.TemporaryDirectory(prefix="uniformer_predict_") as tmp:
        list_file = Path(tmp) / "inputs.txt"
        list_file.write_text("".join(f"{os.path.abspath(inputs[i])} 0\n" for i in todo))
        cfg = {**predictor.data_cfg, "root": "/", "test_list": str(list_file), "max_retries": 0,
               "num_classes": 1, "skip_missing": False}
        for key in ("train_list", "val_list", "class_names"):
            cfg.pop(key, None)
        dataset = build_dataset(cfg, "test")
        expected = model_input_ndim(predictor.model)
        for pos, i in enumerate(todo):
            try:
                item = dataset[pos]
            except Exception as e:  # a file the pipeline cannot decode
                results[i]["error"] = f"cannot read: {e}"
                continue
            x = item["input"].unsqueeze(0).to(predictor.device)
            with torch.no_grad():
                probs = view_logits(predictor.model, x, expected).softmax(-1).mean(1)[0].cpu()
            top = probs.topk(k)
            results[i]["predictions"] = [{"label": predictor.classes[c], "index": int(c), "prob": float(pr)}
                                         for pr, c in zip(top.values.tolist(), top.indices.tolist())]
            results[i]["views"] = int(x.shape[1]) if x.ndim == (expected or 5) + 1 else 1
    return results


def _parse_pairs(pairs: Sequence[str] | None, flag: str) -> dict:
    from uniformer.engine.config import parse_yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = parse_yaml(value)
    return out


def _print_predictions(results: list[dict], stream=None) -> None:
    stream = stream or sys.stdout
    for r in results:
        print(r["input"], file=stream)
        if r["error"]:
            print(f"  error: {r['error']}", file=stream)
            continue
        for rank, p in enumerate(r["predictions"], 1):
            print(f"  {rank}. {p['label']:<32} {p['prob']:.4f}", file=stream)


def cmd_predict(args: argparse.Namespace) -> int:
    if args.task in DENSE_TASKS:  # writes a picture and a JSON per image
        module = dense_task(args.task)
        cfg = module.load_config(args.config) if args.config else None
        results = module.predict(cfg, args.checkpoint, args.inputs, args.out)
        if args.json:
            _print_json(results)
        else:
            print(f"{len(results)} image(s): pictures and JSON in {args.out}")
        return 0
    predictor = load_predictor(args.checkpoint, args.model, args.labels, args.device,
                               _parse_pairs(args.data, "--data"), use_ema=args.ema,
                               model_options=_parse_pairs(args.option, "-o"))
    results = predict_files(predictor, args.inputs, args.topk)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_predictions(results)
    return 0 if all(r["error"] is None for r in results) else 1


# --- demo ---------------------------------------------------------------------------------------------
def demo_recipe(data: Mapping) -> dict:
    """The small recipe `uniformer demo` trains on the built-in dataset (`data`: generate_demo_dataset's result).

    Tuned to reach >= 0.9 validation top-1 within minutes on two CPU cores: a narrow video UniFormer
    (one block per stage) on 8 frames of 64x64, AdamW 1e-3 with one warm-up epoch and cosine decay over
    20 epochs. configs/demo.yaml is the same recipe as a file.
    """
    size = int(data.get("size", 64))
    workers = 1
    return {
        "description": "built-in temporal-order demo: tiny video UniFormer trained from scratch",
        "seed": 0,
        "model": {"name": "uniformer_video_small", "drop_path_rate": 0.0,
                  "kwargs": {"depths": [1, 1, 1, 1], "embed_dims": [32, 64, 128, 256], "head_dim": 32}},
        "data": {
            "format": "video_list", "root": data["root"], "train_list": data["train_list"],
            "val_list": data["val_list"], "class_names": data["class_names"],
            "num_frames": 8, "sampling": "uniform", "input_size": size, "short_side": size,
            "scale_jitter": [size, int(size * 1.25)], "hflip": False, "rand_augment": None, "random_erasing": 0.0,
            "test_clips": 1, "test_crops": 1, "batch_size": 16, "num_workers": workers, "label_smoothing": 0.1,
        },
        "train": {"epochs": 20, "amp": "none", "clip_grad": 5.0,
                  # one compute thread per core the data worker leaves free: extra threads spin on busy cores
                  "threads": max(1, min(8, (os.cpu_count() or 1) - workers))},
        "optim": {"lr": 1e-3, "weight_decay": 0.05},
        "sched": {"name": "cosine", "warmup_epochs": 1, "warmup_lr": 1e-5, "min_lr": 1e-5},
        "checkpoint": {"every": 1, "keep_last": 1},
        "eval": {"split": "val"},
    }


def cmd_demo(args: argparse.Namespace) -> int:
    if args.task in DENSE_TASKS:
        out = Path(args.out if args.out != "demo_out" else f"demo_{args.task}")
        _print_json(dense_task(args.task).demo(out, data_dir=args.data_root, overrides=args.set or ()))
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


# --- registration -------------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (default: the GPU if any), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_commands(subparsers) -> None:
    """Register train, eval, predict and demo on an argparse sub-parsers object."""
    p = subparsers.add_parser("train", help="train a model from a YAML recipe (also under torchrun)",
                              description="Train a model from a YAML recipe; see configs/.")
    p.add_argument("config", help="YAML recipe, e.g. configs/k400_uniformer_s16x4.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe key (dotted, YAML value; repeatable), e.g. --set optim.lr=5e-4")
    p.add_argument("--out", help="output folder (default: the recipe's out_dir, else runs/<recipe name>)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue from the newest checkpoint in the output folder (if any); or a checkpoint")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("eval", help="top-1/top-5/mean class accuracy of a checkpoint (multi-view), as JSON")
    p.add_argument("config", help="YAML recipe naming the model and the data")
    p.add_argument("--checkpoint", required=True, help="training checkpoint or any original UniFormer checkpoint")
    p.add_argument("--split", choices=["train", "val", "test"], help="default: the recipe's eval.split (test)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--batch-size", type=int, help="samples per batch (default: eval.batch_size or data.batch_size)")
    p.add_argument("--output", help="JSON file (default: eval_<split>.json beside the checkpoint)")
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("predict", help="top-k classes of images or videos")
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
    p.add_argument("--task", default="classification", choices=("classification",) + DENSE_TASKS,
                   help="detection/segmentation/pose: write a picture and a JSON per image")
    p.add_argument("--config", help="with --task: the recipe (default: the one recorded in the checkpoint)")
    p.add_argument("--out", default="predictions", help="with --task: output folder")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("demo", help="generate the built-in dataset, train a small model on it, evaluate, "
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
    _add_common(p)
    p.set_defaults(func=cmd_demo)


def main(argv: list[str] | None = None) -> int:
    """`python -m uniformer.commands ...` (e.g. under torchrun) runs the whole `uniformer` command line."""
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
