"""The segmentation demo's training step through DistributedDataParallel, with and without the runner's gradient
layout alignment (`engine.distributed.align_grad_strides`), timed interleaved in one process.

    python benchmarks/ddp_grad_layout.py [--rounds 7 --steps 5 --threads 1]

One gloo process (a world of 1 still runs DDP's reducer: every gradient is copied into its bucket and back).
Both variants start from the same weights and train on the same batch of 8 demo crops (96x96); each round
times `--steps` steps of each variant in turn (forward, the task's losses, backward, AdamW); the best round
of each is reported with the ratio.
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from uniformer.engine.distributed import align_grad_strides  # noqa: E402
from uniformer.tasks import build_task, demo_recipe_path, load_recipe, prepare_demo_data  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the demo recipe's train.threads is 1)")
    p.add_argument("--data-root", default=str(Path(tempfile.gettempdir()) / "uniformer_demo_segmentation"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = build_task(load_recipe(demo_recipe_path("segmentation"), [f"data.root={args.data_root}"]))
    prepare_demo_data(task)
    train = task.build_datasets(["train"])["train"]
    batch = task.collate([train[i] for i in range(task.cfg["train"]["batch_size"])])

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    torch.manual_seed(0)
    base = task.build_model()
    variants = {}
    for name, align in (("as before", False), ("aligned", True)):
        model = copy.deepcopy(base)
        if align:
            align_grad_strides(model)
        variants[name] = (DistributedDataParallel(model), torch.optim.AdamW(model.parameters(), lr=1e-4))

    def step(ddp, opt) -> None:
        opt.zero_grad(set_to_none=True)
        out = task.training_step(ddp, batch)
        sum(v for k, v in out.items() if k.startswith("loss")).backward()
        opt.step()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stride warning of the "as before" variant
        for ddp, opt in variants.values():
            step(ddp, opt)  # warm-up
        best = dict.fromkeys(variants, float("inf"))
        for r in range(args.rounds):
            for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):  # alternate the order
                ddp, opt = variants[name]
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(ddp, opt)
                best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
    dist.destroy_process_group()
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s)")
    for name, seconds in best.items():
        print(f"{name:10s} {seconds * 1000:8.1f} ms/step (best of {args.rounds} rounds x {args.steps} steps)")
    print(f"aligned / as before: {best['aligned'] / best['as before']:.3f}")


if __name__ == "__main__":
    main()
