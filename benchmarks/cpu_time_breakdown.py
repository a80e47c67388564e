"""Where one forward pass spends its time on the CPU: `optimize(backend="inductor")`'s compiled graph against
OpenVINO's CPU plugin on the same fused model, same input, same precision, by kind of work.

Inductor side: the compiled graph's calls into oneDNN and MKL (matrix products, convolutions) and the attention
kernel are timed in place, each call wrapped, in ordinary runs (with inductor's Python wrapper, whose calls can be
wrapped; `optimize` compiles that calling code to C++ on CPUs, around the same kernels). Not with torch.profiler: it
keeps tensors alive, so the allocator hands the large outputs fresh pages and their page faults land in whichever
kernel touches them first (UniFormer-S, bf16: ~8,900 faults per profiled forward against 0-7,000 unprofiled; stage
1's FFN product with GELU read 4.7 ms per call under the profiler, 2.0 ms without). The remainder is inductor's own
C++ loops (norms, residual adds, layout copies), allocation and the Python wrapper. Minor page faults per forward
are counted too. OpenVINO side: its per-node performance counters (`PERF_COUNT`), grouped the same way (its
1x1(x1) convolutions, which the fused model runs as linear layers, as matrix products). The two
backends run one after the other: for throughput ratios use `uniformer benchmark --compare-runtimes` (interleaved).

    python benchmarks/cpu_time_breakdown.py uniformer_small --batch-size 8 --dtype bfloat16
    python benchmarks/cpu_time_breakdown.py uniformer_video_small --input 3x8x224x224 --batch-size 1 --dtype float32

Appends one JSON row per backend to `--results`.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import resource
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

import uniformer
from uniformer import fuse
from uniformer.deploy import optimize as optimize_module
from uniformer.deploy.runtimes import export_for_runtime, keep_signal_stack
from uniformer.profiling import environment

# the extern kernels inductor's CPU graphs call, by the kind of work the README's profile names
INDUCTOR_KERNELS = {
    ("mkldnn", "_linear_pointwise"): "matrix products",
    ("mkl", "_mkl_linear"): "matrix products",
    ("mkldnn", "_convolution_pointwise"): "convolutions",
    ("aten", "_scaled_dot_product_flash_attention_for_cpu"): "attention",
}
# inductor's own extern kernels (`extern_kernels.<name>` in its wrapper code): UniFormer's only batched products are
# the attention's when `optimize` gives an attention the explicit form (product, softmax, product)
INDUCTOR_EXTERN_KERNELS = {"bmm": "attention"}
# OpenVINO node types by the same kinds; its "Subgraph" nodes are the attention products and softmax fused with
# neighbouring elementwise work. Anything else (transposes, reorders, norms, means): "rest".
OPENVINO_KINDS = {"FullyConnected": "matrix products", "MatMul": "matrix products",
                  "Convolution": "convolutions", "GroupConvolution": "convolutions",
                  "Subgraph": "attention", "ScaledDotProductAttention": "attention"}


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(fn, spent: dict, kind: str, op: str):
    """`fn`, its time added to `spent` under its kind of work and under its own name (oneDNN's and MKL's
    products apart)."""
    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        took = time.perf_counter() - start
        spent[kind] += took
        spent[op] += took
        return out
    return timed


class _Timed:
    """Stands in for an op packet in `torch.ops.<ns>`: each overload the graph calls runs `_timed`."""

    def __init__(self, packet, spent: dict, kind: str, op: str):
        self._packet, self._spent, self._kind, self._op = packet, spent, kind, op

    def __getattr__(self, overload: str):
        return _timed(getattr(self._packet, overload), self._spent, self._kind, self._op)


@contextlib.contextmanager
def timed_kernels(spent: dict):
    """Compiled graphs look their extern kernels up in `torch.ops` and in inductor's `extern_kernels` at every
    call: swap in timed stand-ins."""
    originals = {}
    for (ns, name), kind in INDUCTOR_KERNELS.items():
        namespace = getattr(torch.ops, ns)
        originals[(ns, name)] = getattr(namespace, name)
        setattr(namespace, name, _Timed(originals[(ns, name)], spent, kind, f"{ns}.{name}"))
    from torch._inductor.select_algorithm import extern_kernels

    extern = {name: getattr(extern_kernels, name) for name in INDUCTOR_EXTERN_KERNELS if hasattr(extern_kernels, name)}
    for name, kernel in extern.items():
        setattr(extern_kernels, name, _timed(kernel, spent, INDUCTOR_EXTERN_KERNELS[name], f"extern_kernels.{name}"))
    try:
        yield
    finally:
        for (ns, name), packet in originals.items():
            setattr(getattr(torch.ops, ns), name, packet)
        for name, kernel in extern.items():
            setattr(extern_kernels, name, kernel)


def inductor_breakdown(model, x, dtype, runs: int) -> dict:
    # compiled with the Python wrapper, whose kernel calls go through torch.ops where they can be timed; `optimize`
    # compiles the calling code to C++ on CPUs (`cpp_wrapper`), which calls the same kernels without Python
    with mock.patch.object(optimize_module, "CPU_INDUCTOR_OPTIONS", optimize_module.INDUCTOR_OPTIONS):
        compiled = uniformer.optimize(model, example=x, dtype=dtype, backend="inductor")
    for _ in range(3):
        compiled(x)
    spent = collections.defaultdict(float)
    walls, faults = [], []
    # the fused model calls torch.ops.mkldnn itself, so Dynamo guards on it: run the compiled graph unguarded
    # (one shape, one graph) rather than recompile around the stand-ins
    with timed_kernels(spent), torch.compiler.set_stance(skip_guard_eval_unsafe=True):
        for _ in range(runs):
            before, start = minor_faults(), time.perf_counter()
            compiled(x)
            walls.append(time.perf_counter() - start)
            faults.append(minor_faults() - before)
    ms = {kind: spent[kind] / runs * 1e3 for kind in INDUCTOR_KERNELS.values()}
    mean = sum(walls) / runs * 1e3
    ms["rest"] = mean - sum(ms.values())
    ops = {f"{ns}.{name}": spent[f"{ns}.{name}"] / runs * 1e3 for ns, name in INDUCTOR_KERNELS}
    ops.update({f"extern_kernels.{name}": spent[f"extern_kernels.{name}"] / runs * 1e3
                for name in INDUCTOR_EXTERN_KERNELS})
    return dict(forward_ms=mean, best_ms=min(walls) * 1e3, kinds_ms=ms, ops_ms=ops, page_faults=faults)


def pointwise_convolutions(compiled) -> set[str]:
    """Names of the compiled graph's 1x1(x1) convolutions: the fused model runs those (the local blocks' `v` and
    `proj`) as linear layers, so the inductor side counts them as matrix products; so does this breakdown."""
    names = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_rt_info()["layerType"].astype(str) == "Convolution" and op.get_input_size() > 1:
            kernel = op.get_input_partial_shape(1)
            if kernel.is_static and all(d == 1 for d in kernel.to_shape()[2:]):
                names.add(op.get_friendly_name())
    return names


def openvino_breakdown(model, x, dtype, runs: int) -> dict:
    import openvino as ov

    hint = "bf16" if dtype == torch.bfloat16 else "f32"
    with tempfile.TemporaryDirectory(prefix="uniformer_breakdown_") as workdir:
        # the same export `optimize` gives OpenVINO; recompiled here with the performance counters on
        export_for_runtime(fuse(model), "openvino", tuple(x.shape[1:]), workdir, dynamic_batch=False,
                           batch_size=x.shape[0], precision=hint)
        xml = next(Path(workdir).rglob("*.xml"))
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                  "INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True}
        with keep_signal_stack():
            compiled = ov.Core().compile_model(str(xml), "CPU", config)
    pointwise = pointwise_convolutions(compiled)
    request = compiled.create_infer_request()
    data = x.numpy()
    for _ in range(3):
        request.infer([data])
    spent, walls = collections.defaultdict(float), []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer([data])
        walls.append(time.perf_counter() - start)
        for node in request.get_profiling_info():
            kind = "matrix products" if node.node_name in pointwise else OPENVINO_KINDS.get(node.node_type, "rest")
            spent[kind] += node.real_time.total_seconds()
    return dict(forward_ms=sum(walls) / runs * 1e3, best_ms=min(walls) * 1e3,
                kinds_ms={kind: s / runs * 1e3 for kind, s in spent.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="a registered UniFormer, e.g. uniformer_small")
    p.add_argument("--input", default="3x224x224", help="one sample's shape, CxHxW or CxTxHxW")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=6, help="timed forwards per backend")
    p.add_argument("--results", default="cpu_time_breakdown.jsonl", help="JSON lines file the rows are appended to")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(d) for d in args.input.split("x"))
    x = torch.randn(args.batch_size, *shape, generator=torch.Generator().manual_seed(1))
    dtype = getattr(torch, args.dtype)
    model = uniformer.create_model(args.name).eval()
    env = environment()
    for backend, breakdown in (("inductor", inductor_breakdown), ("openvino", openvino_breakdown)):
        row = dict(model=args.name, backend=backend, dtype=args.dtype, batch_size=args.batch_size, input=list(shape),
                   **breakdown(model, x, dtype, args.runs), **env)
        kinds = ", ".join(f"{kind} {ms:.1f}" for kind, ms in sorted(row["kinds_ms"].items()))
        extra = f", page faults per forward {row['page_faults']}" if "page_faults" in row else ""
        if "ops_ms" in row:
            extra += "; by kernel: " + ", ".join(f"{op} {ms:.1f}" for op, ms in row["ops_ms"].items())
        print(f"{backend:<9} forward {row['forward_ms']:.1f} ms (best {row['best_ms']:.1f}): {kinds} ms{extra}")
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
