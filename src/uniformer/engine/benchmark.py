"""Training-step throughput of a recipe (`uniformer benchmark --train --recipe`): `Runner.train_step` against a
bare loop (losses summed, backward, optimiser step, same autocast) on the same model, optimiser and batches.

The runner is set up as `Runner.fit` sets it up and the batches are loaded first (data loading is not timed).
The two run interleaved step by step, so that drifting machine load touches both alike; the overhead is the
median ratio of paired step times (robust on a shared machine), and also given from the best rounds.
"""
from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from uniformer.engine.distributed import DistInfo, cpu_threads, resolve_device
from uniformer.engine.runner import Runner, autocast_context, deterministic_mode, move_to
from uniformer.engine.task import Task
from uniformer.profiling import synchronize

__all__ = ["bare_training_step", "benchmark_training"]


def bare_training_step(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Sequence,
                       device: torch.device, amp: str = "none") -> torch.Tensor:
    """The least an optimiser step does: per micro-batch the sum of the task's `loss*` entries, backward; then
    the optimiser step. Returns the step's loss (mean over the micro-batches, detached)."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for batch in micro_batches:
        with autocast_context(device, amp):
            out = task.training_step(model, move_to(batch, device))
        loss = sum(v for k, v in out.items() if k.startswith("loss")) / len(micro_batches)
        loss.backward()
        total = total + loss.detach()
    optimizer.step()
    return total


def _preload(runner: Runner, count: int) -> list[Any]:
    """The first `count` training batches with enough usable samples (epochs after the first if needed)."""
    batches: list[Any] = []
    epoch = 0
    while len(batches) < count:
        before = len(batches)
        for batch in runner.train_batches(epoch):
            if batch is not None and runner.task.batch_size(batch) >= runner.task.min_batch:
                batches.append(batch)
                if len(batches) == count:
                    break
        if len(batches) == before:
            raise ValueError("the training split gave no usable batch")
        epoch += 1
    return batches


def benchmark_training(task: Task, *, steps: int = 5, rounds: int = 5, warmup: int = 1, device: str | None = "cpu",
                       threads: int | None = None) -> dict:
    """Time `steps` optimiser steps of the runner and of the bare loop per round in `rounds` rounds, after `warmup`
    untimed steps of each; `threads` default: the recipe's `train.threads`.

    Returns {"engine": {...}, "bare": {...}, "overhead_percent", "best_round_overhead_percent", and what the
    step does}; each variant has steps_per_second, samples_per_second, ms_per_step (its best round), round_ms.
    """
    if steps < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"steps={steps}, rounds={rounds}, warmup={warmup}: expected steps, rounds >= 1, warmup >= 0")
    cfg = task.cfg
    d = DistInfo(device=resolve_device(device))
    log = logging.getLogger("uniformer.engine.benchmark")
    with deterministic_mode(cfg["deterministic"], d.device), \
            cpu_threads(threads if threads else cfg["train"]["threads"]):
        runner = Runner(task, ".", show_progress=False)  # writes nothing: no run folder
        runner.setup(d)
        batches = _preload(runner, steps * runner.accum)
        groups = [batches[i * runner.accum:(i + 1) * runner.accum] for i in range(steps)]

        variants = {
            "engine": lambda group: runner.train_step(iter(group), log),
            "bare": lambda group: bare_training_step(task, runner.model, runner.optimizer, group, d.device, runner.amp),
        }
        runner.model.train()
        for i in range(warmup):  # one-off costs (allocator, kernel selection) before timing
            for run in variants.values():
                run(groups[i % steps])
        step_ms = {name: [[] for _ in range(rounds)] for name in variants}  # [round][step]
        for r in range(rounds):
            for i, group in enumerate(groups):
                order = list(variants.items()) if (r + i) % 2 == 0 else list(variants.items())[::-1]
                for name, run in order:
                    synchronize(d.device)
                    t0 = time.perf_counter()
                    run(group)
                    synchronize(d.device)
                    step_ms[name][r].append(1000 * (time.perf_counter() - t0))
        used_threads = torch.get_num_threads()
    samples = runner.batch_size * runner.accum
    results: dict = {}
    for name, per_round in step_ms.items():
        round_ms = [sum(times) / steps for times in per_round]
        best = min(round_ms)
        results[name] = {"ms_per_step": best, "steps_per_second": 1000 / best,
                         "samples_per_second": samples * 1000 / best, "round_ms": round_ms}
    paired = [e / b for e_round, b_round in zip(step_ms["engine"], step_ms["bare"]) for e, b in zip(e_round, b_round)]
    results.update(
        overhead_percent=100 * (statistics.median(paired) - 1),
        best_round_overhead_percent=100 * (results["engine"]["ms_per_step"] / results["bare"]["ms_per_step"] - 1),
        task=task.name, device=str(d.device), threads=used_threads, amp=runner.amp, batch_size=runner.batch_size,
        accum_steps=runner.accum, samples_per_step=samples, clip_grad=cfg["train"]["clip_grad"],
        ema=runner.ema is not None, log_every=cfg["train"]["log_every"], steps=steps, rounds=rounds, warmup=warmup,
        data_loading="excluded (batches loaded before timing)")
    return results
