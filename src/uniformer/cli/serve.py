"""`uniformer serve`: a local web page to try a model on images and videos (Gradio, `uniformer[web]`)."""
from __future__ import annotations

import argparse

from .common import add_device_options, add_open_options, parse_pairs


def run(args: argparse.Namespace) -> int:
    from uniformer.serve import build_app, demo_checkpoint, launch, require_gradio

    require_gradio()
    checkpoint = args.checkpoint
    if not args.model and not checkpoint:
        checkpoint = demo_checkpoint()
        if checkpoint is None:
            raise ValueError("give --model NAME.TAG (released weights) or --checkpoint FILE (e.g. runs/demo/best.pt "
                             "or last.pt of `uniformer demo`; no demo run was found in runs/demo*)")
        print(f"serving {checkpoint}, the checkpoint of the latest `uniformer demo` run")
    app = build_app(args.model, checkpoint, args.task, config=args.config, labels=args.labels,
                    device=args.device, data_overrides=parse_pairs(args.data, "--data"),
                    model_options=parse_pairs(args.option, "-o"), max_file_mb=args.max_file_mb,
                    examples=not args.no_examples, use_ema=args.ema, dtype=args.dtype)
    print(f"UniFormer page on http://{args.host}:{args.port} (Ctrl+C stops it)")
    launch(app, args.host, args.port, args.max_file_mb)
    return 0


def register(sub) -> None:
    from uniformer.serve import DEFAULT_MAX_FILE_MB

    p = sub.add_parser("serve", help="a local web page: drop an image or a video, see the model's answer")
    p.add_argument("--checkpoint", help="a checkpoint (training, original, or `uniformer demo` output; default: "
                   "best.pt or last.pt of the latest demo run in runs/demo*)")
    add_open_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_FILE_MB,
                   help=f"refuse uploads larger than this (default {DEFAULT_MAX_FILE_MB} MB)")
    p.add_argument("--no-examples", action="store_true", help="no example inputs from the built-in demo data")
    add_device_options(p, progress=False)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                   help="classification: auto (default): bfloat16 autocast on GPUs and on CPUs with bfloat16 units, "
                        "else float32")
    p.set_defaults(func=run)
