"""`uniformer export`: ONNX or OpenVINO IR of a model, checked against PyTorch on a random input."""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_model_options, parse_pairs


def run(args) -> int:
    import torch

    import uniformer
    from uniformer.deploy import ExportError, MissingExtraError, export_model
    from uniformer.profiling import default_input, parse_input

    torch.manual_seed(0)
    options = parse_pairs(args.option, "-o")
    if Path(args.model).is_file():
        if args.name is None:
            raise SystemExit(f"error: {args.model} is a checkpoint file: give the model NAME with --name")
        name, checkpoint = args.name, args.model
    else:
        name, checkpoint = args.model, None
    model = uniformer.create_model(name, checkpoint_path=checkpoint, **options).eval()
    shape = parse_input(args.input) if args.input else default_input(model)
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
    p.add_argument("model", help="model name, or a checkpoint file (then --name says which model)")
    p.add_argument("out", help="output file (.onnx; OpenVINO: .xml, written with its .bin)")
    p.add_argument("--name", help="the model name of a checkpoint file")
    p.add_argument("--format", default="onnx", choices=["onnx", "openvino"])
    p.add_argument("--input", help="CxHxW or CxTxHxW without batch (default: the model's)")
    p.add_argument("--batch-size", type=int, default=1, help="batch of the exported graph (without --dynamic-batch)")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch axis free")
    p.add_argument("--fused", action="store_true", help="export uniformer.fuse(model) (faster, same outputs)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_options(p)
    p.set_defaults(func=run)
