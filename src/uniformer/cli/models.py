"""`uniformer models`: the registered variants and their released weights."""
from __future__ import annotations

import json


def run(args) -> int:
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


def register(sub) -> None:
    p = sub.add_parser("models", help="the registered variants with their parameter counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
