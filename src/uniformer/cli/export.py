"""`uniformer export`: ONNX or OpenVINO IR of a model, checked against PyTorch on a random input."""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_model_options, parse_pairs


def run(args) -> int:
    import torch

    import uniformer
    from uniformer.deploy import ExportError, MissingExtraError, export_model
    from uniformer.models.released import RELEASED_WEIGHTS
    from uniformer.profiling import default_input, parse_input

    torch.manual_seed(0)
    options = parse_pairs(args.option, "-o")
    shape = parse_input(args.input) if args.input else None
    if Path(args.model).is_file() and args.name is not None:  # an original backbone file of a named variant
        name = args.name
        model = uniformer.create_model(name, checkpoint_path=args.model, **options).eval()
    elif Path(args.model).is_file() or args.model in RELEASED_WEIGHTS:  # run checkpoint, original file + recipe, tag
        from uniformer.tasks import open as open_checkpoint

        try:
            opened = open_checkpoint(args.model, recipe=args.config, task=args.task, model_options=options or None,
                                     device="cpu")
        except ValueError as e:
            if "--model is needed" not in str(e):
                raise
            raise SystemExit(f"error: {args.model} is not a run checkpoint, so it does not record its model: give "
                             "the variant with --name (and -o its arguments) or the recipe with --config") from None
        if opened.task.name != "classification":
            raise SystemExit(f"error: {args.model} is a {opened.task.name} checkpoint; export covers classification "
                             "models (a dense task's backbone: export the variant with -o features_only=true)")
        model = opened.model.float()
        name = opened.task.meta["model_spec"]["name"]
        if shape is None:  # the test view the checkpoint's recipe (or the tag) predicts with
            view = opened.task.data_view(model)
            size = int(view["input_size"])
            shape = (3, int(view["num_frames"]), size, size) if view["format"] == "video_list" else (3, size, size)
    else:
        if args.config or args.task:
            raise SystemExit("error: --config / --task are for checkpoint files")
        name = args.model
        model = uniformer.create_model(name, **options).eval()
    shape = shape or default_input(model)
    if args.fused:
        model = uniformer.fuse(model)
    try:
        result = export_model(model, shape, args.out, args.format, dynamic_batch=args.dynamic_batch,
                              batch_size=args.batch_size)
    except (ExportError, MissingExtraError) as e:
        raise SystemExit(f"error: {e}") from None
    result["model"] = name
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {result['path']} ({args.format}{', dynamic batch' if args.dynamic_batch else ''}); "
              f"checked against PyTorch on a random {'x'.join(map(str, result['input']))} input: "
              f"relative error {result['relative_error']:.1e}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="ONNX or OpenVINO IR, checked against the PyTorch model")
    p.add_argument("model", help="model name; a run checkpoint (it records its model and test input); an original "
                   "checkpoint with --config (its recipe) or --name (its variant); or released weights NAME.TAG")
    p.add_argument("out", help="output file (.onnx; OpenVINO: .xml, written with its .bin)")
    p.add_argument("--name", help="the variant of an original backbone checkpoint file (with -o its arguments)")
    p.add_argument("--config", help="the recipe of an original checkpoint file")
    p.add_argument("--task", choices=("classification", "detection", "segmentation", "pose"),
                   help="the task of an original checkpoint file")
    p.add_argument("--format", default="onnx", choices=["onnx", "openvino"])
    p.add_argument("--input", help="CxHxW or CxTxHxW without batch (default: the model's)")
    p.add_argument("--batch-size", type=int, default=1, help="batch of the exported graph (without --dynamic-batch)")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch axis free")
    p.add_argument("--fused", action="store_true", help="export uniformer.fuse(model) (faster, same outputs)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_options(p)
    p.set_defaults(func=run)
