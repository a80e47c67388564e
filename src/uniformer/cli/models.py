"""`uniformer models`: the registered variants and their released weights."""
from __future__ import annotations

import json


def _variants(args) -> int:
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


def _released(args) -> int:
    from uniformer.models.released import RELEASED_WEIGHTS

    if args.json:
        print(json.dumps([dict(tag=tag, dataset=w.dataset, classes=w.num_classes, frames=w.frames, stride=w.stride,
                               sampling=w.sampling, views=w.views, crops=w.crops, clips=w.clips,
                               input_size=w.input_size, short_side=w.short_side, channel_order=w.channel_order,
                               mean=list(w.mean), std=list(w.std), top1=w.top1, hub=w.hub, file=w.file,
                               confirmed=w.confirmed, evidence=w.hub_evidence or None)
                          for tag, w in RELEASED_WEIGHTS.items()], indent=1))
        return 0
    width = max(len(t) for t in RELEASED_WEIGHTS)
    print(f"{'tag':<{width}}  {'dataset':<22}  {'frames x stride':<15}  {'views':<7}  {'short':>5}  {'ch':<3}  "
          f"{'mean/std':<10}  {'top-1':>5}  hub file")
    for tag, w in RELEASED_WEIGHTS.items():
        sampling = "-" if not w.is_video else f"{w.frames} x {w.stride}" if w.stride else f"{w.frames} segments"
        mark = "" if w.confirmed else "  (unconfirmed: model-zoo file name)"
        print(f"{tag:<{width}}  {w.dataset:<22}  {sampling:<15}  {w.views:<7}  {w.short_side:>5}  "
              f"{w.channel_order:<3}  {w.normalisation:<10}  {w.top1:>5.1f}  {w.hub}/{w.file}{mark}")
    print("\nviews: frames x crops x clips (images: the crop size); short: the test resize of the short side;\n"
          "ch: the network's input channel order; mean/std: the test normalisation of x / 255\n"
          "(imagenet: 0.485, 0.456, 0.406 / 0.229, 0.224, 0.225). top-1: the original model zoo with these views.\n"
          "Unconfirmed: the file name of the original Google Drive release, not seen on the hub; pass the file with\n"
          "--checkpoint if the hub lacks it.")
    return 0


def run(args) -> int:
    return _released(args) if args.pretrained else _variants(args)


def register(sub) -> None:
    p = sub.add_parser("models", help="the registered variants with their parameter counts")
    p.add_argument("--pretrained", action="store_true",
                   help="every released weight tag: dataset, frames x stride, test views, short side, channel order, "
                        "normalisation, top-1, hub file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
