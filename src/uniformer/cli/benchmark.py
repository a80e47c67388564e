"""`uniformer benchmark`: model throughput, latency and memory, or the input pipeline."""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_model_options, parse_pairs


def run(args) -> int:
    import torch

    import uniformer
    from uniformer.profiling import (
        append_result,
        benchmark_model,
        default_input,
        environment,
        parse_input,
        set_reference_attention,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data:
        return _benchmark_data(args)
    if args.name is None:
        raise SystemExit("error: give a model NAME (or --data CONFIG for the input pipeline)")
    torch.manual_seed(0)
    options = parse_pairs(args.option, "-o")
    model = uniformer.create_model(args.name, checkpoint_path=args.checkpoint, **options).eval()
    shape = parse_input(args.input) if args.input else default_input(model)
    if args.train and args.fused:
        raise SystemExit("error: --fused models are for inference; drop --fused with --train")

    def variant(reference: bool):
        m = set_reference_attention(uniformer.create_model(args.name, **options)) if reference else \
            (uniformer.fuse(model) if args.fused else model)
        if reference:
            m.load_state_dict(model.state_dict())
        return m.eval()

    runs = [("reference", variant(True), "float32", False, False)] if args.compare else []
    runs.append(("requested", variant(args.reference), args.dtype, args.channels_last, args.compile))
    records = []
    for label, m, dtype, cl, comp in runs:
        result = benchmark_model(m, shape, args.batch_size, args.device, dtype, cl, comp, args.train,
                                 args.warmup, args.iters)
        record = dict(model=args.name, run=label, fused=args.fused and label == "requested",
                      reference_attention=label == "reference" or args.reference, **result, **environment())
        records.append(record)
        append_result(args.results, record)
        print(f"{label:>9}: {args.name} {record['mode']} batch {args.batch_size} {'x'.join(map(str, shape))} "
              f"{dtype}{' channels-last' if cl else ''}{' compiled' if comp else ''}"
              f"{' fused' if record['fused'] else ''}{' explicit-attention' if record['reference_attention'] else ''}"
              f": {result['throughput']:.2f} samples/s, {result['latency_ms']:.1f} ms/batch, "
              f"peak memory {result['peak_memory_mb']:.0f} MB")
    if args.compare:
        speedup = records[1]["throughput"] / records[0]["throughput"]
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1)).to(args.device)
        ref_model, new_model = runs[0][1], runs[1][1]
        amp = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
        with torch.inference_mode():
            expected = ref_model.to(args.device)(x).float()
            with torch.autocast(torch.device(args.device).type, dtype=amp, enabled=amp is not None):
                got = new_model(x).float()
        rel = ((got - expected).abs().max() / expected.abs().max()).item()
        summary = dict(model=args.name, run="comparison", speedup=speedup, logits_relative_error=rel,
                       requested=dict(dtype=args.dtype, fused=args.fused, channels_last=args.channels_last,
                                      compile=args.compile), batch_size=args.batch_size, input=list(shape),
                       **environment())
        append_result(args.results, summary)
        print(f"speed-up over the eager float32 reference: {speedup:.2f}x; "
              f"logits relative error {rel:.2e} (max abs difference / max abs logit)")
    print(f"results appended to {args.results}")
    return 0


def _benchmark_data(args) -> int:
    from uniformer.data import benchmark_pipeline
    from uniformer.profiling import append_result, environment
    from uniformer.tasks import load_recipe

    if args.data == "synthetic":  # 10-second 320p videos, Kinetics-style 16x4 sampling at 224
        from uniformer.data import make_benchmark_dataset

        root = Path("~/.cache/uniformer/benchmark_videos").expanduser()
        root.mkdir(parents=True, exist_ok=True)
        recipe = {"task": "classification", "model": {"name": "uniformer_video_small"},
                  "data": make_benchmark_dataset(root)}
        cfg = load_recipe(recipe, args.set)
    else:
        cfg = load_recipe(args.data, args.set)  # validated, with data paths ~-expanded
    result = benchmark_pipeline(cfg["data"], split=args.split, num_workers=args.workers,
                                batches=args.iters, batch_size=args.batch_size)
    record = dict(kind="data", config=str(args.data), **result, **environment())
    append_result(args.results, record)
    print(json.dumps(record, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="throughput, latency and peak memory; results appended as JSON lines")
    p.add_argument("name", nargs="?", help="model name")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input", help="CxHxW or CxTxHxW (default: the model's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="float32, or autocast to bfloat16/float16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fused", action="store_true", help="run uniformer.fuse(model)")
    p.add_argument("--reference", action="store_true",
                   help="explicit attention matrices, as the original code (the eager reference)")
    p.add_argument("--compare", action="store_true",
                   help="also run the eager float32 reference and report speed-up and logits error")
    p.add_argument("--train", action="store_true", help="time training steps (forward, backward, AdamW)")
    p.add_argument("--checkpoint", help="weights to load first")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--results", default="benchmark_results.jsonl", help="JSON-lines file results are appended to")
    p.add_argument("--data", metavar="CONFIG", help="benchmark the input pipeline of a training config instead "
                   "('synthetic': generated 10-second 320p videos, 16x4 clips at 224)")
    p.add_argument("--split", default="train", help="with --data: which split")
    p.add_argument("--workers", type=int, default=2, help="with --data: DataLoader workers")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --data: override config keys")
    add_model_options(p)
    p.set_defaults(func=run)
