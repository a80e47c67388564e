"""`uniformer benchmark`: model throughput, latency and memory, a recipe's training steps, or the input pipeline."""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_model_options, parse_pairs


def run(args) -> int:
    import torch

    import uniformer
    from uniformer.precision import resolve_dtype
    from uniformer.profiling import default_input, parse_input

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recipe:
        return _benchmark_recipe(args)
    args.batch_size = args.batch_size or 8
    if args.data:
        return _benchmark_data(args)
    if args.name is None:
        raise SystemExit("error: give a model NAME (or --data CONFIG for the input pipeline)")
    torch.manual_seed(0)
    options = parse_pairs(args.option, "-o")
    model = uniformer.create_model(args.name, checkpoint_path=args.checkpoint, **options).eval()
    shape = parse_input(args.input) if args.input else default_input(model)
    if args.compare_runtimes:
        return _compare_runtimes(args, model, shape)
    if args.train and args.fused:
        raise SystemExit("error: --fused models are for inference; drop --fused with --train")
    dtype = resolve_dtype("float32" if args.runtime != "torch" and args.dtype == "auto" else args.dtype, args.device)
    if args.runtime != "torch":
        unsupported = [flag for flag, on in (("--train", args.train), ("--compile", args.compile),
                                             ("--channels-last", args.channels_last), ("--reference", args.reference),
                                             (f"--dtype {dtype}", dtype != "float32"),
                                             (f"--device {args.device}", args.device != "cpu")) if on]
        if unsupported:
            raise SystemExit(f"error: --runtime {args.runtime} runs float32 inference on the CPU; drop "
                             f"{', '.join(unsupported)}")
    return _benchmark_model(args, model, shape, dtype, options)


def _benchmark_model(args, model, shape, dtype: str, options: dict) -> int:
    import tempfile

    import torch

    import uniformer
    from uniformer.deploy import MissingExtraError, export_for_runtime
    from uniformer.precision import autocast_dtype
    from uniformer.profiling import append_result, benchmark_model, environment, set_reference_attention

    def variant(reference: bool):
        m = set_reference_attention(uniformer.create_model(args.name, **options)) if reference else \
            (uniformer.fuse(model) if args.fused else model)
        if reference:
            m.load_state_dict(model.state_dict())
        return m.eval()

    workdir = tempfile.TemporaryDirectory(prefix="uniformer_benchmark_")
    requested = variant(args.reference)
    if args.runtime != "torch":
        try:
            requested = export_for_runtime(requested, args.runtime, shape, workdir.name)
        except MissingExtraError as e:
            raise SystemExit(f"error: {e}") from None
    runs = [("reference", variant(True), "float32", False, False)] if args.compare else []
    runs.append(("requested", requested, dtype, args.channels_last, args.compile))
    records = []
    for label, m, run_dtype, cl, comp in runs:
        result = benchmark_model(m, shape, args.batch_size, args.device, run_dtype, cl, comp, args.train,
                                 args.warmup, args.iters)
        record = dict(model=args.name, run=label, fused=args.fused and label == "requested",
                      runtime=args.runtime if label == "requested" else "torch",
                      reference_attention=label == "reference" or args.reference, **result, **environment())
        records.append(record)
        append_result(args.results, record)
        print(f"{label:>9}: {args.name} {record['mode']} batch {args.batch_size} {'x'.join(map(str, shape))} "
              f"{run_dtype}{' channels-last' if cl else ''}{' compiled' if comp else ''}"
              f"{' fused' if record['fused'] else ''}{' explicit-attention' if record['reference_attention'] else ''}"
              f"{'' if record['runtime'] == 'torch' else ' ' + record['runtime']}"
              f": {result['throughput']:.2f} samples/s, {result['latency_ms']:.1f} ms/batch, "
              f"peak memory {result['peak_memory_mb']:.0f} MB")
    if args.compare:
        speedup = records[1]["throughput"] / records[0]["throughput"]
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1)).to(args.device)
        ref_model, new_model = runs[0][1], runs[1][1]
        amp = autocast_dtype(dtype)
        with torch.inference_mode():
            expected = ref_model.to(args.device)(x).float()
            with torch.autocast(torch.device(args.device).type, dtype=amp, enabled=amp is not None):
                got = new_model(x).float()
        rel = ((got - expected).abs().max() / expected.abs().max()).item()
        summary = dict(model=args.name, run="comparison", speedup=speedup, logits_relative_error=rel,
                       requested=dict(dtype=dtype, fused=args.fused, channels_last=args.channels_last,
                                      compile=args.compile, runtime=args.runtime),
                       batch_size=args.batch_size, input=list(shape), **environment())
        append_result(args.results, summary)
        print(f"speed-up over the eager float32 reference: {speedup:.2f}x; "
              f"logits relative error {rel:.2e} (max abs difference / max abs logit)")
    workdir.cleanup()
    print(f"results appended to {args.results}")
    return 0


def _compare_runtimes(args, model, shape) -> int:
    """Every inference path on the same weights, input and static shape, timed interleaved (`inference_variants`)."""
    import tempfile
    import time

    import torch

    from uniformer.deploy import MissingExtraError
    from uniformer.deploy.optimize import inference_variants
    from uniformer.precision import resolve_dtype
    from uniformer.profiling import append_result, compare_models, environment

    if args.train or args.compile or args.channels_last or args.reference or args.fused or args.device != "cpu" \
            or args.dtype == "float16" or args.runtime != "torch":
        raise SystemExit("error: --compare-runtimes compares CPU inference of every runtime itself; use it without "
                         "--train, --compile, --channels-last, --reference, --fused, --runtime, --device cuda or "
                         "--dtype float16")
    # auto: bfloat16 rows where the CPU has bfloat16 units (or UNIFORMER_CPU_BF16=1); float32: none; bfloat16: always
    bfloat16 = resolve_dtype(args.dtype, "cpu") == "bfloat16"
    x = torch.randn(args.batch_size, *shape, generator=torch.Generator().manual_seed(1))
    models, precision, prepare_s = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="uniformer_compare_") as workdir:
        for label, make in inference_variants(model, shape, workdir, args.batch_size, bfloat16=bfloat16).items():
            t0 = time.perf_counter()
            try:
                models[label], precision[label] = make()
            except MissingExtraError as e:
                print(f"{label}: skipped ({e})")
                continue
            prepare_s[label] = time.perf_counter() - t0
        results = compare_models(models, x, rounds=args.rounds, iters=args.iters, warmup=args.warmup)
    env = environment()
    base_label = next(iter(results))
    base = results[base_label]["throughput"]
    unit = "clips/s" if x.ndim == 5 else "images/s"
    print(f"{args.name} batch {args.batch_size} {'x'.join(map(str, shape))} (static), {env['threads']} threads, "
          f"{env['cpu']}, torch {env['torch']}; best of {args.rounds} interleaved rounds of {args.iters}")
    print(f"{'runtime':<28} {'precision':>9} {unit:>10} {'vs ' + base_label:>20} {'ms/batch':>9} {'rel. error':>10} "
          f"{'prepare s':>10}")
    for label, r in results.items():
        print(f"{label:<28} {precision[label]:>9} {r['throughput']:>10.2f} {r['throughput'] / base:>19.2f}x "
              f"{r['latency_ms']:>9.1f} {r['relative_error']:>10.1e} {prepare_s[label]:>10.1f}")
        append_result(args.results, dict(model=args.name, run="compare-runtimes", runtime=label,
                                         precision=precision[label], backend=getattr(models[label], "backend", None),
                                         batch_size=args.batch_size, input=list(shape),
                                         rounds=args.rounds, iters=args.iters, throughput=r["throughput"],
                                         latency_ms=r["latency_ms"], speedup=r["throughput"] / base,
                                         relative_error=r["relative_error"], prepare_s=prepare_s[label], **env))
    for label, model in models.items():
        if getattr(model, "backend_ms", None):
            timings = ", ".join(f"{name} {ms:.1f}" for name, ms in model.backend_ms.items())
            print(f"{label}: ran {model.backend}, the faster when optimize timed its backends ({timings} ms/batch)")
        if getattr(model, "attention_ms", None):
            forms = "; ".join(f"{'x'.join(map(str, shape))}: {min(ms, key=ms.get)} (sdpa {ms['sdpa']:.2f}, explicit "
                              f"{ms['explicit']:.2f} ms)" for shape, ms in model.attention_ms.items())
            print(f"{label}: attention form per input shape, as timed compiled: {forms}")
        if getattr(model, "streams_ms", None):
            streams = "; ".join(f"{'x'.join(map(str, shape))}: " + ", ".join(f"{n} {ms:.1f}" for n, ms in by_n.items())
                                for shape, by_n in model.streams_ms.items())
            print(f"{label}: OpenVINO streams, ms/batch by number of streams (the faster kept): {streams}")
    print(f"precision: what each row computed in (OpenVINO's as it reports it); rel. error: max abs difference / "
          f"max abs output against {base_label}")
    print("prepare s: time to build the variant (fuse; compilation; export and runtime compilation), not in the "
          "timings")
    print(f"results appended to {args.results}")
    return 0


def _benchmark_recipe(args) -> int:
    """Training steps of a recipe: the runner's own step against a bare loop, interleaved (`engine.benchmark`)."""
    from uniformer.engine.benchmark import benchmark_training
    from uniformer.profiling import append_result, environment
    from uniformer.tasks import build_task, demo_recipe_path, load_recipe, prepare_demo_data

    extra = [flag for flag, on in (("a model NAME", args.name), ("--input", args.input),
                                   ("--checkpoint", args.checkpoint), ("--batch-size", args.batch_size),
                                   ("--dtype", args.dtype != "auto"),
                                   ("--runtime", args.runtime != "torch"), ("--compare", args.compare),
                                   ("--compare-runtimes", args.compare_runtimes), ("--compile", args.compile),
                                   ("--channels-last", args.channels_last), ("--fused", args.fused),
                                   ("--reference", args.reference), ("-o", args.option), ("--data", args.data)) if on]
    if not args.train:
        extra.insert(0, "no --train")
    if extra:
        raise SystemExit(f"error: --recipe times the recipe's training steps (--train; the recipe sets model, batch "
                         f"and precision, change them with --set): drop {', '.join(extra)}")
    demo = args.recipe.startswith("demo:")
    recipe = demo_recipe_path(args.recipe[len("demo:"):]) if demo else args.recipe
    cfg = load_recipe(recipe, args.set)
    task = build_task(cfg)
    if demo:
        prepare_demo_data(task)
    result = benchmark_training(task, steps=args.iters, rounds=args.rounds, warmup=args.warmup, device=args.device,
                                threads=args.threads)
    env = environment()
    print(f"{task.name} recipe {recipe}: batch {result['batch_size']} x {result['accum_steps']} accumulation, "
          f"amp {result['amp']}, clip_grad {result['clip_grad']}, EMA {'on' if result['ema'] else 'off'}, "
          f"log every {result['log_every']} steps")
    print(f"{result['device']}, {result['threads']} threads, {env['cpu']}, torch {env['torch']}; best of "
          f"{args.rounds} rounds of {args.iters} steps each, interleaved step by step; batches loaded before timing")
    print(f"{'step':<8} {'steps/s':>9} {'samples/s':>10} {'ms/step':>9}")
    for name in ("engine", "bare"):
        r = result[name]
        print(f"{name:<8} {r['steps_per_second']:>9.3f} {r['samples_per_second']:>10.2f} {r['ms_per_step']:>9.1f}")
    print(f"runner overhead per step: {result['overhead_percent']:+.2f}% (median of {args.rounds * args.iters} "
          f"paired steps), {result['best_round_overhead_percent']:+.2f}% (best rounds); engine: Runner.train_step, "
          "bare: losses, backward, optimiser step")
    append_result(args.results, {"run": "train-recipe", "recipe": str(recipe), "overrides": list(args.set or []),
                                 **env, **result})
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
    if args.split == "train" and int(cfg["data"].get("num_sample") or 1) > 1:  # against num_sample 1, interleaved
        from uniformer.data.benchmark import benchmark_num_sample

        result = benchmark_num_sample(cfg["data"], num_workers=args.workers, batches=args.iters,
                                      batch_size=args.batch_size, rounds=args.rounds)
    else:
        result = benchmark_pipeline(cfg["data"], split=args.split, num_workers=args.workers,
                                    batches=args.iters, batch_size=args.batch_size)
    record = dict(kind="data", config=str(args.data), **result, **environment())
    append_result(args.results, record)
    print(json.dumps(record, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="throughput, latency and peak memory; results appended as JSON lines")
    p.add_argument("name", nargs="?", help="model name")
    p.add_argument("--batch-size", type=int, help="default 8")
    p.add_argument("--input", help="CxHxW or CxTxHxW (default: the model's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 autocast on GPUs and on CPUs with bfloat16 units (AVX512-BF16, AMX), "
                        "else float32")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "openvino"],
                   help="run the model's ONNX / OpenVINO export instead (pip install 'uniformer[deploy]')")
    p.add_argument("--compare-runtimes", action="store_true",
                   help="eager (reference and SDPA), fuse, optimize, onnxruntime and OpenVINO on the same input and "
                        "static shape, interleaved, with ratios; bfloat16 rows (optimize, OpenVINO's default "
                        "precision) with --dtype auto on CPUs with bfloat16 units, or --dtype bfloat16")
    p.add_argument("--rounds", type=int, default=6,
                   help="with --compare-runtimes or --recipe: interleaved rounds (best kept)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fused", action="store_true", help="run uniformer.fuse(model)")
    p.add_argument("--reference", action="store_true",
                   help="explicit attention matrices, as the original code (the eager reference)")
    p.add_argument("--compare", action="store_true",
                   help="also run the eager float32 reference and report speed-up and logits error")
    p.add_argument("--train", action="store_true", help="time training steps (forward, backward, AdamW)")
    p.add_argument("--recipe", metavar="RECIPE", help="with --train: time the training steps of a recipe (a YAML "
                   "file, or demo:TASK for a task's demo recipe) through the runner and through a bare loop, "
                   "interleaved; --iters steps per round")
    p.add_argument("--checkpoint", help="weights to load first")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--results", default="benchmark_results.jsonl", help="JSON-lines file results are appended to")
    p.add_argument("--data", metavar="CONFIG", help="benchmark the input pipeline of a training config instead "
                   "('synthetic': generated 10-second 320p videos, 16x4 clips at 224)")
    p.add_argument("--split", default="train", help="with --data: which split")
    p.add_argument("--workers", type=int, default=2, help="with --data: DataLoader workers")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --data or --recipe: override recipe keys")
    add_model_options(p)
    p.set_defaults(func=run)
