"""`uniformer info`: parameters and GFLOPs of a model; what a checkpoint holds."""
from __future__ import annotations

import json

from .common import add_model_options, parse_pairs


def run(args) -> int:
    import uniformer
    from uniformer.models.checkpoint import guess_variants, read_checkpoint, unwrap_state_dict
    from uniformer.profiling import count_gflops, count_params, default_input, parse_input

    if args.config:
        from uniformer.tasks import load_recipe, recipe_complexity

        cfg = load_recipe(args.config, args.set)
        row = recipe_complexity(cfg)
        if args.json:  # the resolved recipe (defaults included) and what it builds
            extra = {k: row[k] for k in ("model", "input", "num_classes") if k in row}
            print(json.dumps({"params": row["params"], "gflops": round(row["gflops"], 3), **extra, "recipe": cfg},
                             default=str))
        else:
            print("  ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in row.items()))
        return 0
    if args.task:
        from uniformer.tasks.dense import complexity_report

        rows = complexity_report((args.task,))[args.task]
        print(json.dumps(rows, indent=2) if args.json else "\n".join(
            "  ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in row.items()) for row in rows))
        return 0
    if args.name is None and args.checkpoint is None:
        raise SystemExit("error: give a model NAME, a --checkpoint FILE, or both (or --task, or --config)")
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
        model = uniformer.create_model(args.name, checkpoint_path=args.checkpoint, **parse_pairs(args.option, "-o"))
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


def register(sub) -> None:
    p = sub.add_parser("info", help="parameters and GFLOPs of a model; what a checkpoint holds")
    p.add_argument("name", nargs="?", help="model name, e.g. uniformer_small")
    p.add_argument("--input", help="CxHxW or CxTxHxW without batch (default: the model's)")
    p.add_argument("--checkpoint", help="a checkpoint to inspect (and load, with NAME)")
    p.add_argument("--json", action="store_true", help='print {"params": ..., "gflops": ...}; with --config also '
                   '"recipe" (the resolved recipe), "input" and "num_classes" (the class count the recipe implies)')
    p.add_argument("--config", metavar="RECIPE", help="parameters and GFLOPs of the model a recipe of any task "
                   "builds, at its test input")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --config: override a recipe key")
    p.add_argument("--task", choices=("detection", "segmentation", "pose"),
                   help="parameters and GFLOPs of the composed task models at the paper's input sizes")
    add_model_options(p)
    p.set_defaults(func=run)
