"""A small iteration-based training loop shared by the dense tasks.

The original detection / segmentation / pose recipes differ only in their schedule (epochs with
LR steps, iterations with poly or cosine decay, linear warm-up in iterations), their optimiser
keys without weight decay, and what a batch and a loss are. This loop takes those as arguments,
so every task trains, checkpoints, resumes and evaluates the same way on one process:

    history = train_loop(model, dataset, collate, loss_fn, cfg, out_dir, evaluate_fn=...)

Checkpoints load with `torch.load(weights_only=True)`: `last.pt` (model, optimiser, iteration,
RNG state: what `resume` needs) and `final.pt` (weights, recipe and metadata for inference).
Samples a dataset could not read come back as None; the collate functions drop them, and a batch
left with fewer than `min_batch` samples is skipped with a warning instead of crashing the epoch.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["DENSE_FORMAT", "build_param_groups", "lr_at", "train_loop", "save_dense_checkpoint",
           "load_dense_checkpoint", "is_dense_checkpoint", "seed_everything", "write_json"]

DENSE_FORMAT = "uniformer-dense"
_logger = logging.getLogger("uniformer.tasks.dense")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (NaN written as null, as JSON has no NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(_finite(obj), indent=2))
    os.replace(tmp, path)
    return path


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


# --- optimiser and schedule -------------------------------------------------------------------------
def build_param_groups(model: nn.Module, weight_decay: float, no_decay_keys: Sequence[str] = ("norm",),
                       no_decay_1d: bool = False) -> list[dict]:
    """Decay everything but parameters whose name contains one of `no_decay_keys` (the originals'
    `paramwise_cfg custom_keys ... decay_mult=0`) and, with `no_decay_1d`, all 1-D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if any(k in name for k in no_decay_keys) or (no_decay_1d and p.ndim <= 1):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_at(sched: Mapping, base_lr: float, it: int, total_iters: int, iters_per_unit: int) -> float:
    """Learning rate at iteration `it` (0-based).

    `sched.name`: step (×gamma at each of `steps`, counted in the run's unit: epochs or iterations),
    poly ((1 - t)^power), cosine, constant; decays end at `min_lr`. Linear warm-up over
    `warmup_iters` iterations from `warmup_ratio` × the scheduled rate, as in mmcv.
    """
    name = sched["name"]
    min_lr = float(sched.get("min_lr") or 0.0)
    progress = min(1.0, it / max(1, total_iters))
    if name == "step":
        unit = it // max(1, iters_per_unit)
        lr = base_lr * float(sched.get("gamma", 0.1)) ** sum(unit >= s for s in sched.get("steps") or ())
        lr = max(lr, min_lr) if min_lr else lr
    elif name == "poly":
        lr = (base_lr - min_lr) * (1.0 - progress) ** float(sched.get("power", 1.0)) + min_lr
    elif name == "cosine":
        lr = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    elif name == "constant":
        lr = base_lr
    else:
        raise ValueError(f"sched.name={name!r}: expected step, poly, cosine or constant")
    warmup = int(sched.get("warmup_iters") or 0)
    if it < warmup:
        ratio = float(sched.get("warmup_ratio", 0.001))
        lr *= 1.0 - (1.0 - it / warmup) * (1.0 - ratio)
    return lr


# --- checkpoints ------------------------------------------------------------------------------------
def is_dense_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == DENSE_FORMAT


def save_dense_checkpoint(path: str | os.PathLike, *, task: str, model: nn.Module, config: Mapping,
                          meta: Mapping | None = None, **extra) -> Path:
    from uniformer.engine.checkpoint import atomic_save, to_plain

    state = {"format": DENSE_FORMAT, "task": task, "config": dict(config), "meta": dict(meta or {}),
             "model": model.state_dict(), **extra}
    return atomic_save(to_plain(state), path)


def load_dense_checkpoint(path: str | os.PathLike) -> dict | None:
    """This loop's checkpoint at `path`, or None when the file is another kind of checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return obj if is_dense_checkpoint(obj) else None


def _rng_state() -> dict:
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(words), gauss], "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
            int(pos), int(has_gauss), float(cached)], "torch": torch.get_rng_state()}


def _set_rng_state(state: Mapping) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


# --- data order -------------------------------------------------------------------------------------
class _EpochOrder(Sampler):
    """A seeded permutation of the dataset for one epoch, starting at `start` (for mid-epoch resumes)."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0):
        g = torch.Generator().manual_seed(seed * 10007 + epoch)
        self.order = torch.randperm(n, generator=g).tolist()[start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def _batches(dataset: Dataset, collate: Callable, batch_size: int, num_workers: int, seed: int, epoch: int,
             start_batch: int) -> Iterator:
    loader = DataLoader(dataset, batch_size=batch_size, sampler=_EpochOrder(len(dataset), seed, epoch,
                        start_batch * batch_size), num_workers=num_workers, collate_fn=collate, drop_last=True,
                        worker_init_fn=_worker_init, persistent_workers=False)
    yield from loader


# --- the loop ---------------------------------------------------------------------------------------
def train_loop(model: nn.Module, dataset: Dataset, collate: Callable, loss_fn: Callable[[nn.Module, Any], dict],
               cfg: Mapping, out_dir: str | os.PathLike, *, task: str, resume: str | os.PathLike | None = None,
               evaluate_fn: Callable[[nn.Module], dict] | None = None, meta: Mapping | None = None,
               min_batch: int = 1, batch_size_of: Callable[[Any], int] | None = None) -> dict:
    """Train `model` on `dataset` as `cfg` (sections train, optim, sched) says; returns the run's summary.

    `loss_fn(model, batch)` returns named loss tensors (summed for the step). `evaluate_fn(model)`
    returns metrics (it is called every `train.eval_every` units and at the end). The summary has
    the logged `history` (one record per `train.log_every` iterations), `metrics` and `skipped` batches.
    """
    threads = torch.get_num_threads()
    if cfg["train"].get("threads"):
        torch.set_num_threads(int(cfg["train"]["threads"]))
    try:
        return _train_loop(model, dataset, collate, loss_fn, cfg, out_dir, task=task, resume=resume,
                           evaluate_fn=evaluate_fn, meta=meta, min_batch=min_batch, batch_size_of=batch_size_of)
    finally:
        torch.set_num_threads(threads)


def _train_loop(model, dataset, collate, loss_fn, cfg, out_dir, *, task, resume, evaluate_fn, meta, min_batch,
                batch_size_of) -> dict:
    t, o, s = cfg["train"], cfg["optim"], cfg["sched"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(t.get("seed", 0))
    seed_everything(seed)
    batch_size = int(t["batch_size"])
    if len(dataset) < batch_size:
        raise ValueError(f"the training set has {len(dataset)} usable samples, fewer than one batch of {batch_size}")
    iters_per_epoch = len(dataset) // batch_size
    by_epoch = t.get("epochs") is not None
    if by_epoch == (t.get("iters") is not None):
        raise ValueError("train: give exactly one of 'epochs' and 'iters'")
    unit = iters_per_epoch if by_epoch else 1
    total = int(t["epochs"]) * iters_per_epoch if by_epoch else int(t["iters"])
    if t.get("max_iters"):
        total = min(total, int(t["max_iters"]))

    groups = build_param_groups(model, float(o["weight_decay"]), o.get("no_decay_keys") or (),
                                bool(o.get("no_decay_1d", False)))
    optimizer = torch.optim.AdamW(groups, lr=float(o["lr"]), betas=tuple(o.get("betas", (0.9, 0.999))),
                                  weight_decay=float(o["weight_decay"]))
    start_it, history, skipped = 0, [], 0
    last_path = out_dir / "last.pt"
    if resume == "auto":
        resume = last_path if last_path.is_file() else None
    if resume is not None:
        state = load_dense_checkpoint(resume)
        if state is None or "optimizer" not in state:
            raise ValueError(f"{resume}: not a resumable {DENSE_FORMAT} checkpoint (expected last.pt of a run)")
        if state["task"] != task:
            raise ValueError(f"{resume}: a {state['task']} checkpoint cannot resume a {task} run")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_it, history, skipped = int(state["iter"]), list(state.get("history", [])), int(state.get("skipped", 0))
        _set_rng_state(state["rng"])
        _logger.info("resumed from %s at iteration %d", resume, start_it)

    def checkpoint(it: int) -> None:
        save_dense_checkpoint(last_path, task=task, model=model, config=cfg, meta=meta,
                              optimizer=optimizer.state_dict(), iter=it, history=history, skipped=skipped,
                              rng=_rng_state())

    eval_every = t.get("eval_every")
    ckpt_every = t.get("checkpoint_every")
    log_every = max(1, int(t.get("log_every") or 20))
    metrics: dict = {}
    evals: list = []
    model.train()
    it = start_it
    t0 = time.perf_counter()
    running: dict[str, float] = {}
    n_running = 0
    while it < total:
        epoch, first = divmod(it, iters_per_epoch)
        for batch in _batches(dataset, collate, batch_size, int(t.get("num_workers", 0)), seed, epoch, first):
            if it >= total:
                break
            n = batch_size_of(batch) if (batch is not None and batch_size_of) else (0 if batch is None else min_batch)
            if batch is None or n < min_batch:
                skipped += 1
                _logger.warning("iteration %d: skipped a batch with %d readable samples (at least %d needed)",
                                it, n, min_batch)
                it += 1
                continue
            lr = lr_at(s, float(o["lr"]), it, total, unit)
            for g in optimizer.param_groups:
                g["lr"] = lr
            model.train()
            losses = loss_fn(model, batch)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                parts = {k: float(v) for k, v in losses.items()}
                raise FloatingPointError(f"iteration {it}: the loss is {loss.item()} ({parts}); "
                                         "lower optim.lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.get("clip_grad"):
                nn.utils.clip_grad_norm_(model.parameters(), float(t["clip_grad"]))
            optimizer.step()
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            running["loss"] = running.get("loss", 0.0) + float(loss.detach())
            n_running += 1
            it += 1
            if it % log_every == 0 or it == total:
                record = {"iter": it, "epoch": it / iters_per_epoch, "lr": lr,
                          **{k: v / n_running for k, v in running.items()}, "time": time.perf_counter() - t0}
                history.append(record)
                with (out_dir / "log.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
                _logger.info("iter %d/%d lr %.2e loss %.4f", it, total, lr, record["loss"])
                running, n_running = {}, 0
            done_unit = it % unit == 0 or it == total
            if ckpt_every and done_unit and (it // unit) % int(ckpt_every) == 0 and it < total:
                checkpoint(it)
            if evaluate_fn and eval_every and done_unit and (it // unit) % int(eval_every) == 0 and it < total:
                evals.append({"iter": it, **evaluate_fn(model)})
                write_json(evals, out_dir / "evaluations.json")
                model.train()
    checkpoint(it)
    save_dense_checkpoint(out_dir / "final.pt", task=task, model=model, config=cfg, meta=meta)
    if evaluate_fn is not None:
        metrics = evaluate_fn(model)
        evals.append({"iter": it, **metrics})
        write_json(evals, out_dir / "evaluations.json")
        write_json(metrics, out_dir / "metrics.json")
    return {"history": history, "metrics": metrics, "skipped": skipped, "iters": it,
            "train_time_s": time.perf_counter() - t0}
