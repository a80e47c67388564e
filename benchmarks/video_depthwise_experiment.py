"""Experiment: whether 3-D depthwise convolutions written as sums of shifted taps (`use_shifted_taps`, which
inductor fuses into generated kernels) beat cuDNN's in the compiled video model, how long each form takes to
compile (the first call), and where its GPU time goes. Output of one H200 run (the unrolled form only):
benchmarks/results/video_depthwise_h200.txt. That run replaced the convolutions with a local copy of the same
function and had two more variants after these; with the profiles they did not finish inside the device's time
limit, so no profile was printed.

The reduction form (`use_shifted_taps(model, unrolled=False)`) is the candidate for the issue's first-call target
(under 60 s at no less throughput than the unrolled form's 220 s compile): on the CPU, one compiled 5x5x5
convolution of stage 1 took 1.3 s to compile instead of 25.5 s. Its GPU rows are still to be measured:

    python benchmarks/video_depthwise_experiment.py --only "bf16+CL+compile" "bf16+CL+compile+taps (reduction)"
    python benchmarks/video_depthwise_experiment.py [--device cpu --quick] [--profile]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import uniformer  # noqa: E402
from uniformer.models.depthwise import use_shifted_taps  # noqa: E402


def timed(fn, x, warmup, iters, dev):
    for _ in range(warmup):
        fn(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", metavar="LABEL", help="run only these variants (fp32 eager always runs: "
                   "the reference of the speed-ups)")
    p.add_argument("--profile", action="store_true", help="print a CUDA profile of the compiled variants")
    args = p.parse_args()
    dev = torch.device(args.device)
    kw = dict(depths=(1, 1, 1, 1)) if args.quick else {}
    batch, shape = (1, (3, 4, 64, 64)) if args.quick else (8, (3, 16, 224, 224))
    warmup, iters = (1, 2) if args.quick else (3, 20)
    torch.manual_seed(0)
    base = uniformer.create_model("uniformer_video_small", **kw).eval().to(dev)
    x = torch.randn(batch, *shape, device=dev)
    with torch.no_grad():
        ref = base(x).float()

    profiles = []

    def variant(dtype, channels_last, compile_, taps, profile_it=False):
        """`taps`: None (cuDNN's convolutions), "unrolled" or "reduction" (the form of `use_shifted_taps`)."""
        torch._dynamo.reset()
        m = uniformer.create_model("uniformer_video_small", **kw).eval().to(dev)
        m.load_state_dict(base.state_dict())
        if taps:
            use_shifted_taps(m, unrolled=taps == "unrolled")
        xin = x
        if channels_last:
            m = m.to(memory_format=torch.channels_last_3d)
            xin = x.contiguous(memory_format=torch.channels_last_3d)
        run = torch.compile(m) if compile_ else m

        def fn(inp):
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                return run(inp)

        t0 = time.perf_counter()
        out = fn(xin).float()
        first = time.perf_counter() - t0
        err = ((out - ref).norm() / ref.norm()).item()
        med = timed(fn, xin, warmup, iters, dev)
        peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else 0
        if profile_it and dev.type == "cuda":
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    fn(xin)
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=70)
            profiles.append(f"== profile: {dtype} cl={channels_last} taps={taps} (3 calls)\n{table}")
        return dict(clips_s=batch / med, ms=1000 * med, first_call_s=first, rel_err=err, peak_mb=peak)

    rows = {}
    configs = [("fp32 eager", "fp32", False, False, None), ("bf16+CL+compile", "bf16", True, True, None),
               ("bf16+compile", "bf16", False, True, None),
               ("bf16+CL+compile+taps", "bf16", True, True, "unrolled"),
               ("bf16+CL+compile+taps (reduction)", "bf16", True, True, "reduction")]
    known = [c[0] for c in configs]
    for label in args.only or ():
        if label not in known:
            p.error(f"--only {label!r}: the variants are {', '.join(known)}")
    for label, dtype, cl, comp, taps in configs:
        if args.only and label != "fp32 eager" and label not in args.only:
            continue
        r = variant(dtype, cl, comp, taps, profile_it=args.profile and comp)
        rows[label] = r
        r["vs_fp32"] = r["clips_s"] / rows["fp32 eager"]["clips_s"]
        print(f"{label:34s} {r['clips_s']:8.2f} clips/s {r['vs_fp32']:5.2f}x  {r['ms']:8.2f} ms  "
              f"first {r['first_call_s']:6.1f} s  err {r['rel_err']:.1e}  peak {r['peak_mb']:.0f} MB", flush=True)
    print("\n".join(profiles))


if __name__ == "__main__":
    main()
