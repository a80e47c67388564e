"""The training loop behind `uniformer train`: epochs of optimiser steps, evaluation, checkpoints, reports.

One `Trainer` runs one recipe in one output folder, on one process or many (torchrun). Per step:
Mixup/CutMix, autocast (bf16, or fp16 with a GradScaler on GPUs), gradient accumulation (DDP
gradient sync only on the last micro-batch), clipping, AdamW, the per-step warm-up + cosine
schedule and the EMA update. Per epoch: evaluation of the model (and its EMA), a history row
(CSV, TensorBoard, log line with corrupt-sample names), and an atomic checkpoint holding
everything a killed run needs to continue exactly (optimiser, schedule, scaler, EMA, every
process's RNG state; the data order is a function of seed and epoch). At the end: curves,
confusion matrix and `metrics.json`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from uniformer.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointManager,
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
)
from uniformer.engine.config import ConfigError, dump_config
from uniformer.engine.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    cpu_threads,
    init_distributed,
    shutdown_distributed,
)
from uniformer.engine.ema import ModelEma
from uniformer.engine.evaluation import (
    autocast_context,
    predict_loader,
    resolve_amp,
    score_predictions,
    summary_line,
)
from uniformer.engine.loaders import TrainLoader, build_eval_loader, build_split, pipeline_config
from uniformer.engine.optim import WarmupCosineSchedule, build_optimizer, scaled_lr
from uniformer.engine.reporting import (
    TensorBoardLogger,
    log_to,
    plot_confusion_matrix,
    plot_curves,
    write_history_csv,
    write_json,
)
from uniformer.tasks.classification import build_model, classification_loss, merge_outputs, model_spec

__all__ = ["Trainer", "train", "seed_everything", "deterministic_mode"]

_logger = logging.getLogger("uniformer.engine.trainer")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def _higher_is_better(metric: str) -> bool:
    return "loss" not in metric


class Trainer:
    """Train `cfg` (a validated recipe, see `uniformer.engine.config`) into `out_dir`.

    Args:
        resume: None (fresh run; refuses a folder that already holds checkpoints), "auto" (continue
            from the newest checkpoint in `out_dir` if there is one) or a checkpoint path.
        device: "auto"/None, "cpu", "cuda", "cuda:1", ...
        show_progress: tqdm bars on the main process.
    """

    def __init__(self, cfg: Mapping, out_dir: str | os.PathLike, *, resume: str | None = None,
                 device: str | None = None, show_progress: bool = True):
        self.cfg = dict(cfg)
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.device_arg = device
        self.show_progress = show_progress

    # --- set-up -------------------------------------------------------------------------------------
    def _setup(self, dist_info: DistInfo, log: logging.Logger) -> None:
        cfg, d = self.cfg, dist_info
        self.dist = d
        self.amp = resolve_amp(cfg["train"]["amp"], d.device)
        data_cfg = cfg["data"]
        self.train_set = build_split(data_cfg, "train")
        self.val_set = build_split(data_cfg, "val")
        self.num_classes = int(getattr(self.train_set, "num_classes", 0) or 0)
        if self.num_classes < 1:
            raise ValueError("the training dataset does not say how many classes it has (num_classes)")
        self.classes = [str(c) for c in getattr(self.train_set, "classes", None) or
                        [f"class_{i}" for i in range(self.num_classes)]]

        # Same initial weights on every process (DDP would broadcast them anyway; the EMA copy needs it).
        seed_everything(cfg["seed"])
        model = build_model(cfg["model"], self.num_classes).to(d.device)
        if cfg["train"]["sync_bn"] and d.distributed:
            if d.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                log.warning("train.sync_bn ignored: SyncBatchNorm needs GPUs")
        self.model = model
        self.ema = ModelEma(model, cfg["ema"]["decay"], cfg["ema"]["warmup"]) if cfg["ema"]["enabled"] else None
        self.ddp = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None) \
            if d.distributed else None
        seed_everything(cfg["seed"] + d.rank)

        self.batch_size = int(data_cfg.get("batch_size", 8))
        self.accum = cfg["train"]["accum_steps"]
        self.effective_batch = self.batch_size * d.world_size * self.accum
        self.train_loader = TrainLoader(self.train_set, data_cfg, self.batch_size, cfg["seed"], d.rank, d.world_size,
                                        d.device)
        steps = len(self.train_loader) // self.accum
        if cfg["train"]["max_steps_per_epoch"]:
            steps = min(steps, cfg["train"]["max_steps_per_epoch"])
        if steps < 1:
            raise ConfigError(f"the training split has {len(self.train_set)} samples: too few for one step of "
                              f"{self.batch_size} per process x {d.world_size} process(es) x {self.accum} "
                              "accumulation steps (lower data.batch_size or train.accum_steps)")
        self.steps_per_epoch = steps
        self.epochs = cfg["train"]["epochs"]
        o, s = cfg["optim"], cfg["sched"]
        self.peak_lr = scaled_lr(o["lr"], self.effective_batch, o["lr_base_batch"])
        self.optimizer = build_optimizer(model, self.peak_lr, o["weight_decay"], o["betas"], o["eps"], o["no_decay_1d"])
        self.schedule = WarmupCosineSchedule(self.optimizer, self.peak_lr, self.epochs * steps,
                                             round(s["warmup_epochs"] * steps), s["warmup_lr"], s["min_lr"], s["name"])
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=self.amp == "fp16")
        self.mixup = self._build_mixup(data_cfg)
        self.label_smoothing = float(data_cfg.get("label_smoothing", 0.0) or 0.0)
        eval_bs = cfg["eval"]["batch_size"] or self.batch_size
        eval_workers = cfg["eval"]["num_workers"]
        eval_workers = int(data_cfg.get("num_workers", 4)) if eval_workers is None else eval_workers
        self.val_loader = build_eval_loader(self.val_set, data_cfg, eval_bs, eval_workers, d.rank, d.world_size,
                                            d.device)
        self.checkpoints = CheckpointManager(self.out_dir, cfg["checkpoint"]["keep_last"])
        self.start_epoch, self.global_step = 0, 0
        self.history: list[dict] = []
        self.best: dict = {"metric": cfg["checkpoint"]["best_metric"], "value": None, "epoch": None}

    def _build_mixup(self, data_cfg: Mapping):
        """Mixup/CutMix from the data section's keys (mixup, cutmix, label_smoothing, ...), or None."""
        from uniformer.data import build_mixup

        return build_mixup(pipeline_config(data_cfg), self.num_classes)

    # --- checkpoints ---------------------------------------------------------------------------------
    def _state(self, rng_states: list) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "version": 1,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch_done, "global_step": self.global_step,
            "world_size": self.dist.world_size, "rng": rng_states,
            "history": self.history, "best": self.best,
            "config": self.cfg, "model_name": self.cfg["model"]["name"], "model_spec": model_spec(self.cfg["model"]),
            "num_classes": self.num_classes, "classes": self.classes,
        }

    def _resume_path(self, log: logging.Logger) -> Path | None:
        if self.resume in (None, ""):
            existing = self.checkpoints.latest()
            if existing is not None:
                raise ConfigError(f"{self.out_dir} already holds checkpoints ({existing.name}); pass --resume auto "
                                  "to continue that run, or choose another --out")
            return None
        if self.resume == "auto":
            path = self.checkpoints.latest()
            if path is None:
                log.info("--resume auto: no checkpoint in %s, starting from scratch", self.out_dir)
            return path
        path = Path(self.resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {self.resume}: no such checkpoint")
        return path

    def _load(self, path: Path, log: logging.Logger) -> None:
        ckpt = load_training_checkpoint(path)
        if ckpt["model_spec"] != model_spec(self.cfg["model"]) or ckpt["num_classes"] != self.num_classes:
            raise ConfigError(f"--resume {path}: the checkpoint was trained as {ckpt['model_spec']} with "
                              f"{ckpt['num_classes']} classes, this recipe builds {model_spec(self.cfg['model'])} "
                              f"with {self.num_classes}")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            if ckpt.get("ema"):
                self.ema.load_state_dict(ckpt["ema"])
            else:
                log.warning("%s has no EMA weights; the EMA restarts from the current weights", path)
                self.ema = ModelEma(self.model, self.ema.decay, self.ema.warmup)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["scheduler"])
        if ckpt["scheduler"].get("total_steps") != self.schedule.total_steps:
            log.warning("the schedule length changed (%s -> %d steps): epochs or batch differ from the checkpoint's",
                        ckpt["scheduler"].get("total_steps"), self.schedule.total_steps)
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.history = list(ckpt["history"])
        self.best = dict(ckpt["best"])
        rng = ckpt.get("rng") or []
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            log.warning("the checkpoint was written by %d process(es), this run has %d: random streams are re-seeded",
                        len(rng), self.dist.world_size)
            seed_everything(self.cfg["seed"] + 1000 * self.start_epoch + self.dist.rank)
        log.info("resumed from %s (epoch %d done, step %d)", path, self.start_epoch, self.global_step)

    # --- one epoch -----------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, log: logging.Logger) -> tuple[dict, list[str]]:
        d, model = self.dist, self.ddp or self.model
        model.train()
        clip = self.cfg["train"]["clip_grad"]
        log_every = self.cfg["train"]["log_every"]
        batches = self.train_loader.epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
        correct = torch.zeros((), dtype=torch.float64, device=d.device)
        samples = 0
        failures: list[str] = []
        start = time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}", dynamic_ncols=True,
                   disable=not (self.show_progress and d.is_main), leave=False)
        try:
            for step in range(self.steps_per_epoch):
                lr = self.schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
                for micro in range(self.accum):
                    batch = next(batches)
                    if batch.get("failures"):
                        failures += list(batch["failures"])
                        log.warning("epoch %d step %d: replaced unreadable sample(s): %s", epoch + 1, step + 1,
                                    ", ".join(batch["failures"]))
                    x = batch["input"].to(d.device, non_blocking=True)
                    y = batch["label"].to(d.device, non_blocking=True)
                    target = y
                    if self.mixup is not None:
                        x, target = self.mixup(x, y)
                    sync = contextlib.nullcontext() if (self.ddp is None or micro == self.accum - 1) \
                        else self.ddp.no_sync()
                    with sync:
                        with autocast_context(d.device, self.amp):
                            outputs = model(x)
                            loss = classification_loss(outputs, target, self.label_smoothing)
                        self.scaler.scale(loss / self.accum).backward()
                    loss_sum += loss.detach().double() * x.shape[0]
                    if self.mixup is None:
                        correct += merge_outputs(outputs).detach().argmax(-1).eq(y).sum().double()
                    samples += x.shape[0]
                last_loss = loss.item()
                if not math.isfinite(loss_sum.item()):  # checked before the weights take the step
                    raise FloatingPointError(f"the loss is not finite ({last_loss}) at epoch {epoch + 1}, step "
                                             f"{step + 1}: lower optim.lr, set train.clip_grad, or use train.amp=none")
                if clip:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update(self.model)
                self.global_step += 1
                if step % log_every == 0 or step == self.steps_per_epoch - 1:
                    rate = samples * d.world_size / max(1e-9, time.perf_counter() - start)
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
                bar.update(1)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        total_loss, total_correct, total_samples = all_reduce_sum(
            [loss_sum.item(), correct.item(), samples], d.device)
        all_failures = [f for part in all_gather_objects(failures) for f in part]
        row = {"epoch": epoch + 1, "lr": self.schedule.current_lr, "train_loss": total_loss / total_samples}
        if self.mixup is None:
            row["train_top1"] = total_correct / total_samples
        row.update({"train_samples": int(total_samples), "epoch_seconds": seconds,
                    "clips_per_second": total_samples / max(seconds, 1e-9), "failures": len(all_failures)})
        return row, all_failures

    def _evaluate(self, epoch: int, log: logging.Logger) -> tuple[dict, dict | None]:
        row, last = {}, None
        targets = [("val", self.model)] + ([("val_ema", self.ema.module)] if self.ema and self.cfg["ema"]["eval"]
                                           else [])
        for prefix, model in targets:
            pred = predict_loader(model, self.val_loader, self.dist, self.amp, desc=f"{prefix} {epoch + 1}",
                                  show_progress=self.show_progress, logger=log)
            m = score_predictions(pred, self.classes)
            row.update({f"{prefix}_loss": m["loss"], f"{prefix}_top1": m["top1"], f"{prefix}_top5": m["top5"],
                        f"{prefix}_mean_class_acc": m["mean_class_acc"]})
            if prefix == "val":
                last = m
                if m["failures"]:
                    row["val_failures"] = len(m["failures"])
        return row, last

    # --- the run -------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Run (or continue) training; returns the final metrics (also written to `metrics.json`)."""
        dist_info = init_distributed(self.device_arg)
        try:
            with log_to(self.out_dir, dist_info.is_main, dist_info.rank) as log, \
                    deterministic_mode(self.cfg["deterministic"], dist_info.device), \
                    cpu_threads(self.cfg["train"]["threads"]):
                return self._fit(dist_info, log)
        finally:
            shutdown_distributed(dist_info)

    def _fit(self, d: DistInfo, log: logging.Logger) -> dict:
        self._setup(d, log)
        resume_from = self._resume_path(log)
        if resume_from is not None:
            self._load(resume_from, log)
        tb = None
        if d.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.cfg, self.out_dir / "config.yaml")
            tb = TensorBoardLogger(self.out_dir / "tensorboard", self.start_epoch)
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info("model %s: %.2fM parameters, %d classes; %d train / %d val samples",
                     self.cfg["model"]["name"], n_params / 1e6, self.num_classes, len(self.train_set),
                     len(self.val_set))
            log.info("%d process(es) on %s, amp %s; batch %d x %d process(es) x %d accumulation = %d per step; "
                     "peak lr %.3g; %d steps/epoch x %d epochs", d.world_size, d.device, self.amp, self.batch_size,
                     d.world_size, self.accum, self.effective_batch, self.peak_lr, self.steps_per_epoch, self.epochs)
        last_eval: dict | None = None
        self.epoch_done = self.start_epoch
        try:
            for epoch in range(self.start_epoch, self.epochs):
                row, failures = self._train_epoch(epoch, log)
                # each process updated BatchNorm statistics on its own batches: evaluate rank 0's everywhere
                broadcast_buffers(self.model)
                if self.ema is not None:
                    broadcast_buffers(self.ema.module)
                final = epoch + 1 == self.epochs
                if (epoch + 1) % self.cfg["train"]["eval_every"] == 0 or final:
                    val_row, last_eval = self._evaluate(epoch, log)
                    row.update(val_row)
                self.epoch_done = epoch + 1
                self.history.append(row)
                improved = self._update_best(row)
                rng_states = all_gather_objects(capture_rng_state())
                if d.is_main:
                    if (epoch + 1) % self.cfg["checkpoint"]["every"] == 0 or final:
                        self.checkpoints.save(self._state(rng_states), epoch + 1)
                    if improved and self.cfg["checkpoint"]["save_best"]:
                        state = self._state([])
                        for key in ("optimizer", "scaler", "rng"):
                            state.pop(key)
                        self.checkpoints.save_best(state)
                    write_history_csv(self.history, self.out_dir / "metrics.csv")
                    tb.log_epoch(row)
                    self._log_epoch(row, failures, log)
                barrier()
            if self.start_epoch >= self.epochs:
                log.info("the run in %s is already complete (%d epochs)", self.out_dir, self.epochs)
            summary = self._finish(last_eval, log)
        finally:
            if tb is not None:
                tb.close()
        return summary

    def _update_best(self, row: Mapping) -> bool:
        key = self.best["metric"]
        value = row.get(key)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return False
        old = self.best["value"]
        better = old is None or (value > old if _higher_is_better(key) else value < old)
        if better:
            self.best = {"metric": key, "value": float(value), "epoch": int(row["epoch"])}
        return better

    def _log_epoch(self, row: Mapping, failures: list[str], log: logging.Logger) -> None:
        parts = [f"epoch {row['epoch']}/{self.epochs}", f"lr {row['lr']:.3g}", f"train loss {row['train_loss']:.4f}"]
        if "train_top1" in row:
            parts.append(f"train top1 {row['train_top1']:.4f}")
        for key in ("val_loss", "val_top1", "val_top5", "val_mean_class_acc", "val_ema_top1"):
            if key in row:
                parts.append(f"{key.replace('_', ' ')} {row[key]:.4f}")
        parts.append(f"{row['clips_per_second']:.1f} clips/s, {row['epoch_seconds']:.0f}s")
        parts.append(f"{len(failures)} unreadable sample(s) replaced" + (f": {', '.join(failures)}" if failures
                                                                         else ""))
        log.info(" | ".join(parts))

    def _finish(self, last_eval: dict | None, log: logging.Logger) -> dict:
        summary: dict = {"epochs": self.epoch_done, "out_dir": str(self.out_dir)}
        last = self.history[-1] if self.history else {}
        summary.update({k: v for k, v in last.items() if k.startswith("val_")})
        summary.update({"best_metric": self.best["metric"], "best_value": self.best["value"],
                        "best_epoch": self.best["epoch"],
                        "failures_total": sum(int(r.get("failures", 0)) for r in self.history),
                        "train_seconds": sum(float(r.get("epoch_seconds", 0.0)) for r in self.history),
                        "checkpoint": str(self.checkpoints.latest()) if self.dist.is_main else None})
        if self.dist.is_main:
            plot_curves(self.history, self.out_dir / "curves.png")
            if last_eval is not None:
                plot_confusion_matrix(last_eval["confusion"], self.classes, self.out_dir / "confusion_matrix.png")
                summary["val_per_class_acc"] = last_eval["per_class_acc"]
            summary["classes"] = self.classes
            write_json(self.out_dir / "metrics.json", summary)
            log.info("done: %s", summary_line({"top1": summary.get("val_top1", float("nan")),
                                               "top5": summary.get("val_top5", float("nan")),
                                               "mean_class_acc": summary.get("val_mean_class_acc", float("nan")),
                                               "loss": summary.get("val_loss", float("nan")),
                                               "num_samples": len(self.val_set), "num_views": 1}, "val "))
        return summary


def train(cfg: Mapping, out_dir: str | os.PathLike, *, resume: str | None = None, device: str | None = None,
          show_progress: bool = True) -> dict:
    """Train a validated recipe into `out_dir`; see `Trainer`."""
    return Trainer(cfg, out_dir, resume=resume, device=device, show_progress=show_progress).fit()
