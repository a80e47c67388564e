"""`uniformer convert`: any supported checkpoint layout to the project's .safetensors."""
from __future__ import annotations

from pathlib import Path

from .common import add_model_options, parse_pairs


def run(args) -> int:
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
    options = parse_pairs(args.option, "-o")
    model = uniformer.create_model(name, checkpoint_path=args.src, **options)
    dst = Path(args.dst)
    if dst.suffix != ".safetensors":
        raise SystemExit(f"error: {dst}: the project's own format is .safetensors")
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, dst, name, options)
    print(f"wrote {dst} ({name}, {len(model.state_dict())} tensors)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="write any supported checkpoint layout as the project's .safetensors")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--model", help="variant name (default: recognised from the checkpoint)")
    add_model_options(p)
    p.set_defaults(func=run)
