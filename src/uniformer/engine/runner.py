"""The one training loop: a `Runner` trains any `Task` (see `uniformer.engine.task`) from its recipe.

A checkpoint holds everything a killed run needs to continue exactly, also mid-epoch (the data order and
augmentations are functions of seed, epoch and position). The run folder: `train.log`, `metrics.csv`,
`metrics.json`, `last.pt`, `best.pt`, periodic checkpoints, `curves.png`, `tensorboard/` and the task's pictures.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from uniformer.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointFile,
    CheckpointManager,
    as_checkpoint,
    capture_rng_state,
    load_run_checkpoint,
    load_run_weights,
    restore_rng_state,
)
from uniformer.engine.config import ConfigError
from uniformer.engine.distributed import (
    DistInfo,
    align_grad_strides,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    check_same_recipe_and_data,
    cpu_threads,
    disagreements,
    init_distributed,
    per_rank,
    shutdown_distributed,
    sync_batchnorm,
)
from uniformer.engine.ema import ModelEma
from uniformer.engine.loaders import eval_loader, items_per_batch, seed_everything, train_loader
from uniformer.engine.optim import LRSchedule, build_optimizer, scaled_lr
from uniformer.engine.reporting import (
    LOGGER_NAME,
    TensorBoardLogger,
    dump_config,
    log_to,
    plot_curves,
    write_history_csv,
    write_json,
)
from uniformer.engine.task import Task
from uniformer.precision import resolve_dtype


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the message says where and what to change (the command line shows no traceback)."""


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device):
    """Deterministic kernels (and no cuDNN autotuning) for the duration of a run; restores the previous mode."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench, prev_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)  # an op without a deterministic kernel warns
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_bench, prev_det


def resolve_amp(amp: str, device: torch.device) -> str:
    """"auto" -> bf16 on GPUs that support it, fp16 on older GPUs; on CPUs bf16 only where the CPU has
    bfloat16 units (`uniformer.precision`), else none (float32). "bf16" on a CPU without them warns."""
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp = 'fp16' needs a GPU (device is {device}); use 'bf16' or 'none' on CPUs")
    names = {"auto": "auto", "none": "float32", "bf16": "bfloat16", "fp16": "float16"}
    return {"float32": "none", "bfloat16": "bf16", "float16": "fp16"}[resolve_dtype(names[amp], device)]


def autocast_context(device: torch.device, amp: str):
    """`torch.autocast` for "bf16" / "fp16", nothing for "none"."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch on `device`; everything else as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def eval_batches(task: Task, dataset, d: DistInfo, indices=None):
    """The evaluation batches of this process's shard (or of `indices`), `eval.batch_size` / `eval.num_workers`
    defaulting to the task's `eval_defaults()`."""
    ev, t = task.cfg["eval"], task.cfg["train"]
    batch_size, num_workers = task.eval_defaults()
    batch_size = int(ev["batch_size"] or batch_size)
    num_workers = int(num_workers if ev["num_workers"] is None else ev["num_workers"])
    return eval_loader(dataset, task.eval_collate, batch_size, num_workers, t, d.rank, d.world_size, d.device,
                       indices)


def evaluate_model(task: Task, model: nn.Module, dataset, d: DistInfo, amp: str = "none") -> dict:
    """Metrics of `model` on `dataset`: each process predicts its shard, the task merges all shards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast_context(d.device, amp):
            local = task.evaluate(model, dataset, eval_batches(task, dataset, d))
    finally:
        model.train(was_training)
    return task.merge(dataset, all_gather_objects(local))


def _scalars(metrics: Mapping, prefix: str) -> dict:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


class Runner:
    """Train `task` into `out_dir` on `device` ("auto"/None, "cpu", "cuda:1", ...). `resume`: None (a fresh run),
    "auto" (from the newest readable checkpoint in `out_dir`, if any) or a checkpoint path."""

    def __init__(self, task: Task, out_dir: str | os.PathLike, *, resume: str | None = None,
                 device: str | None = None, show_progress: bool = True):
        self.task, self.cfg = task, task.cfg
        self.out_dir = Path(out_dir)
        self.resume, self.device_arg, self.show_progress = resume, device, show_progress

    def setup(self, d: DistInfo) -> None:
        """Datasets, model, EMA, DDP wrapper, optimiser, schedule and scaler of the recipe on this process
        (what `fit` trains; `engine.benchmark` times `train_step` on them)."""
        cfg, t, task = self.cfg, self.cfg["train"], self.task
        self.dist = d
        self.amp = resolve_amp(t["amp"], d.device)
        sets = task.build_datasets(["train", "val"])
        self.train_set, self.val_set = sets["train"], sets.get("val")
        check_same_recipe_and_data(cfg, {name: len(split) if split is not None else None
                                         for name, split in sets.items()})
        seed_everything(cfg["seed"])  # the same initial weights on every process
        model = task.build_model().to(d.device)
        gpus = d.distributed and d.device.type != "cpu"  # SyncBatchNorm has no CPU kernels
        if t["sync_bn"] and d.distributed and not gpus and d.rank == 0:
            logging.getLogger(LOGGER_NAME).warning("train.sync_bn: SyncBatchNorm runs on GPUs only; on CPU "
                                                  "processes each BatchNorm keeps its own statistics")
        self.model = model = sync_batchnorm(model, t["sync_bn"], convert=gpus)
        e = cfg["ema"]
        self.ema = ModelEma(model, e["decay"], e["warmup"]) if e["enabled"] else None
        self.ddp = None
        if d.distributed:
            align_grad_strides(model)  # before DDP lays out its buckets: no per-step strided gradient copies
            self.ddp = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        seed_everything(cfg["seed"] + d.rank)

        self.batch_size, self.accum = t["batch_size"], t["accum_steps"]
        self.global_batch = self.batch_size * d.world_size * self.accum
        per_process = len(self.train_set) // d.world_size  # EpochSampler drops the tail
        try:
            steps = per_process // items_per_batch(self.train_set, self.batch_size) // self.accum
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if t["max_steps_per_epoch"]:
            steps = min(steps, t["max_steps_per_epoch"])
        if steps < 1:
            raise ConfigError(f"the training split has {len(self.train_set)} samples: too few for one step of "
                              f"{self.batch_size} per process x {d.world_size} process(es) x {self.accum} "
                              "accumulation steps (lower train.batch_size or train.accum_steps)")
        self.steps_per_epoch = steps
        self.by_epoch = t["epochs"] is not None
        self.unit_steps = steps if self.by_epoch else 1  # optimiser steps per epoch or per iteration
        self.total_steps = t["epochs"] * steps if self.by_epoch else t["iters"]
        o, s = cfg["optim"], cfg["sched"]
        self.peak_lr = scaled_lr(o["lr"], self.global_batch, o["lr_base_batch"])
        self.optimizer = build_optimizer(model, self.peak_lr, o["weight_decay"], o["betas"], o["eps"],
                                         o["no_decay_1d"], o["no_decay_keys"])
        warmup = round(s["warmup_epochs"] * steps) if s["warmup_epochs"] else int(s["warmup_iters"])
        self.schedule = LRSchedule(self.optimizer, self.peak_lr, self.total_steps, kind=s["name"],
                                   warmup_steps=warmup, warmup_lr=s["warmup_lr"], warmup_ratio=s["warmup_ratio"],
                                   min_lr=s["min_lr"], power=s["power"], gamma=s["gamma"],
                                   milestones=[round(m * self.unit_steps) for m in s["steps"]])
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=self.amp == "fp16")
        self.checkpoints = CheckpointManager(self.out_dir, cfg["checkpoint"]["keep_last"],
                                             "epoch" if self.by_epoch else "iter")
        self.step = 0
        self.history: list[dict] = []
        self.best: dict = {"metric": cfg["checkpoint"]["best_metric"], "value": None, "step": None}
        self.failures = 0  # unreadable samples replaced on this process since the last checkpoint
        self.failures_done = 0  # on all processes up to the last checkpoint
        self.skipped = 0  # micro-batches with too few usable samples, on this process
        self._running: dict = {}  # loss sums since the last logged step
        self._samples, self._clock = 0, time.perf_counter()

    def _state(self, rng_states: list | None) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": self.task.name,
            "config": self.cfg, "meta": self.task.meta,
            "model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
            "step": self.step, "epoch": self.step / self.steps_per_epoch, "history": self.history,
            "best": self.best, "world_size": self.dist.world_size, "failures": self.failures_done,
        }
        if rng_states is not None:  # resumable
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.schedule.state_dict(),
                         scaler=self.scaler.state_dict(), rng=rng_states)
        return state

    def _load(self, log: logging.Logger) -> None:
        if self.resume in (None, ""):
            existing = self.checkpoints.latest()
            if existing is not None or (self.out_dir / "metrics.csv").is_file():
                raise ConfigError(f"{self.out_dir} already holds a run ({(existing or self.out_dir).name}); pass "
                                  "--resume auto to continue it, or choose another --out")
            return
        if self.resume == "auto":
            found = self.checkpoints.load_latest()
            if found is None:
                log.info("--resume auto: no checkpoint in %s, starting from scratch", self.out_dir)
                return
            path, ckpt = found
        else:
            path = Path(self.resume)
            ckpt = load_run_checkpoint(path)
        if ckpt["task"] != self.task.name:
            raise ConfigError(f"--resume {path}: this is a {ckpt['task']} checkpoint; the recipe is a "
                              f"{self.task.name} recipe")
        if ckpt["meta"] != self.task.meta:
            raise ConfigError(f"--resume {path}: the checkpoint's model or data differ from this recipe's "
                              f"(checkpoint: {ckpt['meta']}; recipe: {self.task.meta})")
        try:
            load_run_weights(self.model, CheckpointFile(Path(path), "run", None, run=ckpt), task=self.task.name)
        except ValueError as e:
            raise ConfigError(f"--resume: {e}") from None
        if self.ema is not None:
            if ckpt.get("ema"):
                self.ema.load_state_dict(ckpt["ema"])
            else:
                log.warning("%s has no EMA weights; the EMA restarts from the current weights", path)
                self.ema = ModelEma(self.model, self.ema.decay, self.ema.warmup)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["scheduler"])
        if ckpt["scheduler"].get("total_steps") != self.schedule.total_steps:
            log.warning("the schedule length changed (%s -> %d steps): the run length or batch differ from the "
                        "checkpoint's", ckpt["scheduler"].get("total_steps"), self.schedule.total_steps)
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.history = [row for row in ckpt["history"] if row["step"] <= self.step]
        self.best = dict(ckpt["best"])
        self.failures_done = int(ckpt.get("failures", 0))
        rng = ckpt.get("rng") or []
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            log.warning("the checkpoint was written by %d process(es), this run has %d: random streams are re-seeded",
                        len(rng), self.dist.world_size)
            seed_everything(self.cfg["seed"] + 1000 * self.step + self.dist.rank)
        log.info("resumed from %s (step %d of %d)", path, self.step, self.total_steps)

    def fit(self) -> dict:
        """Run (or continue) training; returns the summary (also written to `metrics.json`)."""
        d = init_distributed(self.device_arg)
        try:
            with log_to(self.out_dir, d.is_main, d.rank) as log, \
                    deterministic_mode(self.cfg["deterministic"], d.device), \
                    cpu_threads(self.cfg["train"]["threads"]):
                return self._fit(d, log)
        finally:
            shutdown_distributed(d)

    def train_batches(self, epoch: int, start_batch: int = 0):
        """This process's training batches of `epoch` (0-based) from batch `start_batch` on."""
        return iter(train_loader(self.train_set, self.task.collate, self.cfg["train"], self.cfg["seed"], epoch,
                                 self.dist.rank, self.dist.world_size, self.dist.device, start_batch))

    def _fit(self, d: DistInfo, log: logging.Logger) -> dict:
        self.setup(d)
        self._load(log)
        differ = disagreements({"step": self.step})
        if differ:
            raise ConfigError(f"the processes resumed at different steps (step {per_rank(differ['step'])}): "
                              f"{self.out_dir} must be one folder every node shares, so that --resume auto finds "
                              "the same checkpoint everywhere")
        tb = None
        if d.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.cfg, self.out_dir / "config.yaml")
            tb = TensorBoardLogger(self.out_dir / "tensorboard", self.step)
            log.info("%s: %.2fM parameters; %d train / %s val samples", self.task.name,
                     sum(p.numel() for p in self.model.parameters()) / 1e6, len(self.train_set),
                     len(self.val_set) if self.val_set is not None else "no")
            log.info("%d process(es) on %s, amp %s; batch %d x %d process(es) x %d accumulation = %d per step; "
                     "peak lr %.3g; %d steps (%d per epoch)", d.world_size, d.device, self.amp, self.batch_size,
                     d.world_size, self.accum, self.global_batch, self.peak_lr, self.total_steps,
                     self.steps_per_epoch)
        last_eval: dict | None = None
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.task.name} train", dynamic_ncols=True,
                   disable=not (self.show_progress and d.is_main))
        try:
            while self.step < self.total_steps:
                epoch, offset = divmod(self.step, self.steps_per_epoch)
                batches = self.train_batches(epoch, offset * self.accum)
                for _ in range(offset, self.steps_per_epoch):
                    row = self.train_step(batches, log)
                    bar.update(1)
                    if row is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                        self._record(row)
                        if d.is_main:
                            tb.log(row)
                            log.info(self._log_line(row))
                    if self.step % self.unit_steps == 0 or self.step == self.total_steps:
                        last_eval = self._end_of_unit(log, tb) or last_eval
                    if self.step >= self.total_steps:
                        break
            if last_eval is None and self.val_set is not None:  # a finished run resumed: evaluate once more
                last_eval = self._evaluate(log)
        finally:
            bar.close()
            if tb is not None:
                tb.close()
        return self._finish(last_eval, log)

    def train_step(self, batches: Iterator, log: logging.Logger) -> dict | None:
        """One optimiser step on the next `accum_steps` batches; returns the history row when it is logged."""
        d, model = self.dist, self.ddp or self.model
        model.train()
        lr = self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        micro_batches = [next(batches, None) for _ in range(self.accum)]
        counts = [self.task.batch_size(b) if b is not None else 0 for b in micro_batches]
        # Every process skips the same micro-batches (those too small on any process): one that skipped alone
        # would leave the others waiting in the gradient all-reduce. The last one kept synchronises gradients.
        short = all_reduce_sum([n < self.task.min_batch for n in counts], d.device)
        kept = [micro for micro, s in enumerate(short) if s == 0]
        not_finite = None  # the first non-finite loss of this process's micro-batches, described
        for micro, (batch, n) in enumerate(zip(micro_batches, counts)):
            failures = batch.get("failures") if isinstance(batch, Mapping) else None
            if failures:
                self.failures += len(failures)
                log.warning("step %d: replaced unreadable sample(s): %s", self.step + 1, ", ".join(failures))
            if micro not in kept:
                self.skipped += 1
                why = (f"with {n} readable samples (at least {self.task.min_batch} needed)" if n < self.task.min_batch
                       else "because another process's has too few readable samples")
                log.warning("step %d: skipped a batch %s", self.step + 1, why)
                continue
            batch = move_to(batch, d.device)
            sync = contextlib.nullcontext() if (self.ddp is None or micro == kept[-1]) else self.ddp.no_sync()
            with sync:
                with autocast_context(d.device, self.amp):
                    out = self.task.training_step(model, batch)
                loss = sum(v.float() for k, v in out.items() if k.startswith("loss"))
                if not torch.isfinite(loss) and not_finite is None:
                    not_finite = f"{loss.item()}; {({k: float(v.detach()) for k, v in out.items()})}"
                # the mean over the micro-batches kept: a skipped one does not shrink the step
                self.scaler.scale(loss / len(kept)).backward()
            running = {k: v.detach().float() for k, v in out.items()}
            running.update(loss=loss.detach(), _count=1)  # `loss`: the sum the step optimised
            for k, v in running.items():
                self._running[k] = self._running.get(k, 0) + v
            self._samples += n
        # Checked before the weights take the step, by every process together (one raising alone would leave
        # the others waiting in the next gradient all-reduce).
        if all_reduce_sum([not_finite is not None], d.device)[0]:
            raise NonFiniteLossError(
                f"the loss is not finite ({not_finite or 'on another process'}) at step {self.step + 1} (epoch "
                f"{self.step // self.steps_per_epoch + 1}): lower optim.lr, set train.clip_grad, or use "
                "train.amp=none")
        if kept:  # else no gradient: the step only advances the schedule
            clip = self.cfg["train"]["clip_grad"]
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
        self.step += 1
        end_of_epoch = self.by_epoch and self.step % self.unit_steps == 0
        if not (self.step % self.cfg["train"]["log_every"] == 0 or end_of_epoch or self.step == self.total_steps):
            return None
        keys = sorted(k for k in self._running if k != "_count")
        # means over every process's micro-batches since the last logged step (one small all-reduce)
        *sums, count, samples = all_reduce_sum([float(self._running[k]) for k in keys] +
                                               [self._running.get("_count", 0), self._samples], d.device)
        if count == 0:  # every batch since the last row was skipped: nothing to log
            return None
        seconds = time.perf_counter() - self._clock
        row = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "lr": lr,
               **{k if k.startswith("loss") else f"train_{k}": v / max(count, 1) for k, v in zip(keys, sums)},
               "samples_per_second": samples / max(seconds, 1e-9)}
        self._running, self._samples, self._clock = {}, 0, time.perf_counter()
        return row

    def _record(self, row: Mapping) -> None:
        if self.history and self.history[-1]["step"] == row["step"]:
            self.history[-1].update(row)
        else:
            self.history.append(dict(row))

    def _evaluate(self, log: logging.Logger) -> dict:
        # each process updated BatchNorm statistics on its own batches: evaluate rank 0's everywhere
        broadcast_buffers(self.model)
        metrics = evaluate_model(self.task, self.model, self.val_set, self.dist, self.amp)
        row = {"step": self.step, **_scalars(metrics, "val_")}
        if self.ema is not None and self.cfg["ema"]["eval"]:
            broadcast_buffers(self.ema.module)
            row.update(_scalars(evaluate_model(self.task, self.ema.module, self.val_set, self.dist, self.amp),
                                "val_ema_"))
        self._record(row)
        if self.dist.is_main:
            log.info("step %d: %s", self.step, "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "step"))
        return metrics

    def _end_of_unit(self, log: logging.Logger, tb) -> dict | None:
        """Evaluation and checkpoints due after an epoch (or iteration) of the run."""
        count = self.step // self.unit_steps
        final = self.step >= self.total_steps
        metrics = None
        every = self.cfg["train"]["eval_every"]
        if self.val_set is not None and (final or (every and count % every == 0)):
            metrics = self._evaluate(log)
            if self.dist.is_main:
                tb.log(self.history[-1])
        c = self.cfg["checkpoint"]
        improved = metrics is not None and self._update_best(self.history[-1])
        periodic = count % c["every"] == 0
        if periodic or final or improved:
            rng_states = all_gather_objects(capture_rng_state())
            self.failures_done += sum(all_gather_objects(self.failures))
            self.failures = 0
            if self.dist.is_main:
                if periodic or final:
                    self.checkpoints.save(self._state(rng_states), count if periodic else None)
                if improved and c["save_best"]:
                    self.checkpoints.save_best(self._state(None))
                write_history_csv(self.history, self.out_dir / "metrics.csv")
            barrier()
        return metrics

    def _update_best(self, row: Mapping) -> bool:
        key = self.best["metric"]
        value = row.get(key)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return False
        old = self.best["value"]
        better = old is None or (value < old if "loss" in key else value > old)  # a loss is better lower
        if better:
            self.best = {"metric": key, "value": float(value), "step": int(row["step"])}
        return better

    def _log_line(self, row: Mapping) -> str:
        parts = [f"step {row['step']}/{self.total_steps}", f"epoch {row['epoch']:.2f}", f"lr {row['lr']:.3g}"]
        parts += [f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("loss", "train_"))]
        parts.append(f"{row['samples_per_second']:.1f} samples/s")
        return " | ".join(parts)

    def _finish(self, last_eval: dict | None, log: logging.Logger) -> dict:
        summary: dict = {"task": self.task.name, "steps": self.step, "epochs": self.step / self.steps_per_epoch,
                         "out_dir": str(self.out_dir), "checkpoint": str(self.checkpoints.last_path),
                         "best_metric": self.best["metric"], "best_value": self.best["value"],
                         "best_step": self.best["step"],
                         "failures_total": self.failures_done + sum(all_gather_objects(self.failures)),
                         "skipped_batches": sum(all_gather_objects(self.skipped))}
        if last_eval is not None:
            summary.update({f"val_{k}": v for k, v in last_eval.items()})
        if self.dist.is_main:
            write_history_csv(self.history, self.out_dir / "metrics.csv")
            plot_curves(self.history, self.out_dir / "curves.png")
            if last_eval is not None:
                self.task.write_pictures(self.out_dir, last_eval)
            write_json(self.out_dir / "metrics.json", summary)
            log.info("done: %d steps in %s", self.step, self.out_dir)
        summary["history"] = list(self.history)
        return summary


def evaluate_checkpoint(task: Task, checkpoint: str | os.PathLike | CheckpointFile, *, split: str | None = None,
                        device: str | None = None, use_ema: bool | None = None,
                        output: str | os.PathLike | None = None) -> dict:
    """Score `checkpoint` on a split of the task's recipe (default `eval.split`); writes the metrics as JSON
    (default: `eval_<split>.json` beside the checkpoint) and the task's pictures beside it."""
    ckpt = as_checkpoint(checkpoint)  # read once, also when the caller has not read it yet
    checkpoint = ckpt.path
    cfg = task.cfg
    split = split or cfg["eval"]["split"]
    use_ema = cfg["eval"]["use_ema"] if use_ema is None else use_ema
    d = init_distributed(device)
    try:
        with log_to(None, d.is_main, d.rank) as log, cpu_threads(cfg["train"]["threads"]):
            dataset = task.build_datasets([split])[split]
            if dataset is None:
                raise ConfigError(f"the recipe has no {split} split")
            model = task.build_model(for_training=False)
            task.load_weights(model, ckpt, use_ema=use_ema)
            model.to(d.device)
            metrics = evaluate_model(task, model, dataset, d, resolve_amp(cfg["train"]["amp"], d.device))
            result = {"task": task.name, "checkpoint": str(checkpoint), "split": split,
                      "weights": "ema" if use_ema else "model", **metrics}
            if d.is_main:
                out = Path(output) if output else checkpoint.parent / f"eval_{split}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                write_json(out, result)
                task.write_pictures(out.parent, metrics, prefix=f"{out.stem}_")
                result["output"] = str(out)
                log.info("%s on %s: %s", checkpoint.name, split,
                         "  ".join(f"{k} {v:.4f}" for k, v in _scalars(metrics, "").items()))
            return result
    finally:
        shutdown_distributed(d)
