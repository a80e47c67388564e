"""The `uniformer` command line: models, info, benchmark, convert (+ train/eval/predict/demo)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

__all__ = ["main"]


def _options(pairs: list[str] | None) -> dict:
    """`key=value` pairs with YAML values: `-o num_classes=10 -o depths=[1,1,1,1]`."""
    from uniformer.engine.config import parse_yaml  # YAML that reads 1e-4 as a number

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: option {pair!r} is not of the form key=value")
        out[key.strip()] = parse_yaml(value)
    return out


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="model argument, YAML value (repeatable), e.g. -o features_only=true -o stage3=hybrid")


# --- models -------------------------------------------------------------------------------------
def cmd_models(args) -> int:
    import uniformer
    from uniformer.profiling import count_params

    rows = []
    for name in uniformer.list_models():
        model = uniformer.create_model(name)
        tags = [t.split(".", 1)[1] for t in uniformer.list_models(name, pretrained=True) if "." in t]
        rows.append((name, count_params(model), "video" if getattr(model, "video", False) else "image",
                     ", ".join(tags)))
    if args.json:
        print(json.dumps([dict(name=n, params=p, kind=k, weights=w.split(", ") if w else []) for n, p, k, w in rows]))
        return 0
    width = max(len(r[0]) for r in rows)
    print(f"{'model':<{width}}  {'kind':<5}  {'params':>12}  released weights")
    for name, params, kind, tags in rows:
        print(f"{name:<{width}}  {kind:<5}  {params:>12,}  {tags}")
    return 0


# --- info -----------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    import uniformer
    from uniformer.models.checkpoint import guess_variants, read_checkpoint, unwrap_state_dict
    from uniformer.profiling import count_gflops, count_params, default_input, parse_input

    if args.task:
        from uniformer.tasks.dense import complexity_report

        rows = complexity_report((args.task,))[args.task]
        print(json.dumps(rows, indent=2) if args.json else "\n".join(
            "  ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in row.items()) for row in rows))
        return 0
    if args.name is None and args.checkpoint is None:
        raise SystemExit("error: give a model NAME, a --checkpoint FILE, or both (or --task)")
    report: dict = {}
    if args.checkpoint:
        obj, meta = read_checkpoint(args.checkpoint)
        sd, info = unwrap_state_dict(obj)
        info.update(meta)
        report["checkpoint"] = dict(
            file=str(args.checkpoint), tensors=len(sd), wrapper=info.get("wrapper", "none"),
            looks_like=uniformer.identify_variant(sd, info), candidates=guess_variants(sd, info),
            params=sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var",
                                                                            "num_batches_tracked"))))
    if args.name:
        model = uniformer.create_model(args.name, checkpoint_path=args.checkpoint, **_options(args.option))
        shape = parse_input(args.input) if args.input else default_input(model)
        report.update(model=args.name, input=list(shape), params=count_params(model),
                      gflops=round(count_gflops(model, shape), 3))
    if args.json:
        keys = ("params", "gflops") if args.name else ()
        print(json.dumps({k: report[k] for k in keys} | ({"checkpoint": report["checkpoint"]}
                                                          if "checkpoint" in report else {})))
        return 0
    if "checkpoint" in report:
        c = report["checkpoint"]
        print(f"checkpoint  {c['file']}\n  wrapper   {c['wrapper']}\n  tensors   {c['tensors']}\n"
              f"  params    {c['params']:,}\n  looks like {c['looks_like']}")
    if args.name:
        shape = "x".join(map(str, report["input"]))
        print(f"{report['model']}  input {shape}\n  params  {report['params']:,}\n"
              f"  GFLOPs  {report['gflops']:.2f} (multiply-adds / 1e9, batch 1)")
    return 0


# --- benchmark ------------------------------------------------------------------------------------
def cmd_benchmark(args) -> int:
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
    model = uniformer.create_model(args.name, checkpoint_path=args.checkpoint, **_options(args.option)).eval()
    shape = parse_input(args.input) if args.input else default_input(model)
    if args.train and args.fused:
        raise SystemExit("error: --fused models are for inference; drop --fused with --train")

    def variant(reference: bool):
        m = set_reference_attention(uniformer.create_model(args.name, **_options(args.option))) if reference else \
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
    from uniformer.engine.config import load_config
    from uniformer.profiling import append_result, environment

    if args.data == "synthetic":  # 10-second 320p videos, Kinetics-style 16x4 sampling at 224
        from uniformer.data import make_benchmark_dataset

        root = Path("~/.cache/uniformer/benchmark_videos").expanduser()
        root.mkdir(parents=True, exist_ok=True)
        recipe = {"model": {"name": "uniformer_video_small"}, "data": make_benchmark_dataset(root)}
        cfg = load_config(None, args.set, base=recipe)
    else:
        cfg = load_config(args.data, args.set)  # validated, with data paths ~-expanded
    result = benchmark_pipeline(cfg["data"], split=args.split, num_workers=args.workers,
                                batches=args.iters, batch_size=args.batch_size)
    record = dict(kind="data", config=str(args.data), **result, **environment())
    append_result(args.results, record)
    print(json.dumps(record, indent=2))
    return 0


# --- convert --------------------------------------------------------------------------------------
def cmd_convert(args) -> int:
    import uniformer
    from uniformer.models.checkpoint import guess_variants, read_checkpoint, save_safetensors, unwrap_state_dict

    name = args.model
    if name is None:
        obj, meta = read_checkpoint(args.src)
        sd, info = unwrap_state_dict(obj)
        candidates = guess_variants(sd, {**info, **meta})
        if len(candidates) != 1:
            raise SystemExit(f"error: {args.src} looks like {uniformer.identify_variant(sd, info)}; "
                             "name the variant with --model")
        name = candidates[0]
    options = _options(args.option)
    model = uniformer.create_model(name, checkpoint_path=args.src, **options)
    dst = Path(args.dst)
    if dst.suffix != ".safetensors":
        raise SystemExit(f"error: {dst}: the project's own format is .safetensors")
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, dst, name, options)
    print(f"wrote {dst} ({name}, {len(model.state_dict())} tensors)")
    return 0


# --- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uniformer", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="the registered variants with their parameter counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="parameters and GFLOPs of a model; what a checkpoint holds")
    p.add_argument("name", nargs="?", help="model name, e.g. uniformer_small")
    p.add_argument("--input", help="CxHxW or CxTxHxW without batch (default: the model's)")
    p.add_argument("--checkpoint", help="a checkpoint to inspect (and load, with NAME)")
    p.add_argument("--json", action="store_true", help='print {"params": ..., "gflops": ...}')
    p.add_argument("--task", choices=("detection", "segmentation", "pose"),
                   help="parameters and GFLOPs of the composed task models at the paper's input sizes")
    _add_model_options(p)
    p.set_defaults(func=cmd_info)

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
    _add_model_options(p)
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("convert", help="write any supported checkpoint layout as the project's .safetensors")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--model", help="variant name (default: recognised from the checkpoint)")
    _add_model_options(p)
    p.set_defaults(func=cmd_convert)

    from uniformer.commands import add_commands  # train, eval, predict, demo

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from uniformer.models.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
