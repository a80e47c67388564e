"""GPU numbers of the README: inference precision/compile variants and dense-task training steps.

    python benchmarks/gpu.py --out results.jsonl          # on a CUDA machine (about 5 minutes on an H200)
    python benchmarks/gpu.py --device cpu --quick --train-dtype float32   # the code paths at toy sizes

Inference (issue targets: bfloat16 + SDPA + channels-last + `torch.compile` >= 2.5x the eager float32
throughput): `uniformer_small` at batch 64 (3x224x224) and `uniformer_video_small` at batch 8 (3x16x224x224),
each as eager float32, eager bfloat16 autocast, and bfloat16 + channels-last + compile, through the same
`uniformer.profiling.benchmark_model` as `uniformer benchmark`.

Training (bfloat16 autocast, AdamW, forward + backward + step of the task's own `training_step`): Mask R-CNN
UniFormer-S h14 at 2 images of 800x1333 and UperNet UniFormer-S at 8 crops of 512x512, built from the shipped
recipes. Every row is printed as it is measured and appended to `--out` as a JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import uniformer  # noqa: E402
from uniformer.engine.benchmark import bare_training_step  # noqa: E402
from uniformer.profiling import benchmark_model, peak_memory_mb, synchronize  # noqa: E402
from uniformer.tasks import build_task, load_recipe  # noqa: E402


def detection_batch(n: int, size: tuple[int, int], classes: int, device: torch.device, g: torch.Generator):
    """`n` random images (float 0..255) with 8 random boxes each and their box-shaped masks."""
    h, w = size
    images, targets = [], []
    for i in range(n):
        images.append((torch.rand(3, h, w, generator=g) * 255).to(device))
        xy = torch.rand(8, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 32 + torch.rand(8, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(8, h, w, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        labels = torch.randint(1, classes + 1, (8,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device),
                        "image_id": i})
    return images, targets


def segmentation_batch(n: int, size: tuple[int, int], classes: int, device: torch.device, g: torch.Generator):
    h, w = size
    return {"img": torch.randn(n, 3, h, w, generator=g).to(device),
            "seg": torch.randint(0, classes, (n, h, w), generator=g).to(device), "ids": list(range(n))}


def time_training_steps(recipe: str, make_batch, batch_images: int, device: torch.device, amp: str, warmup: int,
                        iters: int, overrides: list[str]) -> dict:
    """Median time of bare training steps (`engine.benchmark.bare_training_step`: the task's `loss*` entries
    summed under `amp` autocast, backward, AdamW)."""
    cfg = load_recipe(REPO / recipe, overrides)
    task = build_task(cfg)
    model = task.build_model(for_training=True).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    batch = make_batch(device)

    def step() -> float:
        return float(bare_training_step(task, model, opt, [batch], device, amp))

    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = [], None
    for _ in range(iters):
        t0 = time.perf_counter()
        loss = step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"kind": "train", "recipe": recipe, "batch": batch_images, "amp": amp, "step_ms": 1000 * median,
            "images_per_s": batch_images / median, "peak_memory_mb": peak_memory_mb(device), "last_loss": loss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="toy sizes (checks the code paths, not the speed)")
    p.add_argument("--out", default="gpu_results.jsonl")
    p.add_argument("--train-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="autocast of the training steps (float32 for a CPU without bfloat16 units)")
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "image", "video"])
    args = p.parse_args()
    device = torch.device(args.device)
    out = Path(args.out)
    q = args.quick
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    print(json.dumps(env), flush=True)

    def record(row: dict) -> None:
        row = {**row, **env}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    warmup, iters = (1, 2) if q else (3, 10)
    g = torch.Generator().manual_seed(0)
    train_amp = "bf16" if args.train_dtype == "bfloat16" else "none"
    if "train" not in args.skip:
        seg_size, seg_batch = ((64, 64), 2) if q else ((512, 512), 8)
        record(time_training_steps(
            "configs/segmentation/upernet_uniformer_small_global_ade20k_160k.yaml",
            lambda d: segmentation_batch(seg_batch, seg_size, 150, d, g), seg_batch, device, train_amp, warmup, iters,
            ["model.backbone.pretrained=null"] + (["model.channels=32", "model.aux_channels=16"] if q else [])))
        det_size = (128, 192) if q else (800, 1333)
        record(time_training_steps(
            "configs/detection/mask_rcnn_uniformer_small_h14_1x_coco.yaml",
            lambda d: detection_batch(2, det_size, 80, d, g), 2, device, train_amp, warmup, iters,
            ["model.backbone.pretrained=null", "data.classes=" + json.dumps([f"c{i}" for i in range(80)])]))
    rows = [("image", "uniformer_small", (3, 224, 224), 64), ("video", "uniformer_video_small", (3, 16, 224, 224), 8)]
    for kind, name, shape, batch in rows:
        if kind in args.skip:
            continue
        if q:
            shape, batch = (shape[:-2] if kind == "image" else (3, 4)) + (64, 64), 2
        kwargs = dict(depths=(1, 1, 2, 1)) if q else {}
        baseline = None
        for dtype, cl, comp in (("float32", False, False), ("bfloat16", False, False), ("bfloat16", True, True)):
            torch._dynamo.reset()
            model = uniformer.create_model(name, **kwargs).eval()
            t0 = time.perf_counter()
            r = benchmark_model(model, shape, batch, str(device), dtype, cl, comp, False,
                                warmup=warmup + (2 if comp else 0), iters=iters * 2)
            r["wall_s_incl_compile"] = time.perf_counter() - t0
            baseline = baseline or r["throughput"]
            record({"kind": kind, "model": name, **r, "vs_eager_float32": r["throughput"] / baseline})
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
