"""Loading weights into a composed dense model: our own checkpoints, and the original toolboxes' files.

Original detector / segmentor / pose checkpoints hold `backbone.*` and head tensors under `state_dict`: the
backbone goes through the package's converter (`uniformer.models.checkpoint.load_state`); the heads, renamed by
the task's `convert`, must then fit exactly. An ImageNet checkpoint fills the backbone only.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from torch import nn

from uniformer.engine.checkpoint import as_checkpoint, load_run_weights
from uniformer.models.checkpoint import CheckpointError, key_listing, load_state

__all__ = ["load_task_weights"]

_logger = logging.getLogger("uniformer.tasks.dense")


def load_task_weights(model: nn.Module, path, *, task: str,
                      convert: Callable[[dict, nn.Module], dict] | None = None, skip_mismatched: bool = False,
                      backbone: nn.Module | None = None, backbone_prefix: str = "backbone.",
                      use_ema: bool = False) -> dict:
    """Load `path` (a file or a `CheckpointFile`) into `model`; returns `{"format": "run" | "original" |
    "backbone-only", "meta", "skipped"}`. `backbone`: the UniFormer inside `model` (its keys there start with
    `backbone_prefix`); `skip_mismatched` leaves head tensors of another shape (e.g. another number of classes)
    as initialised, for fine-tuning on a new label set."""
    ckpt = as_checkpoint(path)
    path = ckpt.path
    if ckpt.run is not None:
        if ckpt.task != task:
            raise CheckpointError(f"{path}: this is a {ckpt.task} checkpoint; it cannot be loaded into a "
                                  f"{task} model")
        try:
            own = load_run_weights(model, ckpt, task=task, use_ema=use_ema)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        return {"format": "run", "meta": own.get("meta", {}), "skipped": []}

    obj = ckpt.obj
    entries = obj if isinstance(obj, Mapping) else {}
    sd = next((entries[k] for k in ("state_dict", "model", "module") if isinstance(entries.get(k), Mapping)), obj)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: no state dict found (expected a 'state_dict' entry holding tensors)")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    meta = dict(entries["meta"]) if isinstance(entries.get("meta"), Mapping) else {}
    try:
        load_state(backbone if backbone is not None else model.backbone, obj, path, meta=ckpt.meta)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: the backbone part does not fit: {e}") from None
    heads = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    if not any(k.startswith("backbone.") for k in sd):
        _logger.info("%s is a backbone (classification) checkpoint: the %s heads keep their initial values", path, task)
        return {"format": "backbone-only", "meta": meta, "skipped": []}
    converted = convert(heads, model) if convert is not None else heads
    mine = {k: v for k, v in model.state_dict().items() if not k.startswith(backbone_prefix)}
    missing = [k for k in mine if k not in converted and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in converted if k not in mine]
    mismatched = [k for k in converted if k in mine and converted[k].shape != mine[k].shape]
    skipped = []
    if skip_mismatched and mismatched:
        skipped, mismatched = mismatched, []
        converted = {k: v for k, v in converted.items() if k not in skipped}
        _logger.warning("%s: %s keep their initial values (shapes differ from the checkpoint's)", path,
                        ", ".join(skipped))
    if missing or unexpected or mismatched:
        lines = [f"{path}: the heads of this checkpoint do not fit the {task} model:"]
        lines += [f"  {what}: {key_listing(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected))
                  if keys]
        if mismatched:
            lines.append("  shape mismatches: " + key_listing(
                [f"{k} {tuple(converted[k].shape)} vs {tuple(mine[k].shape)}" for k in mismatched], 3))
            lines.append("  (another number of classes? pass skip_mismatched=True to fine-tune from it)")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(converted, strict=False)
    return {"format": "original", "meta": meta, "skipped": skipped}
