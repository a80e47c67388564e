"""The classification network of a recipe: building it, loading its weights, its loss and its scores
per view (what `Task`, prediction and `uniformer info` share)."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def model_spec(model_cfg: Mapping) -> dict:
    """The architecture part of `model:` (what is needed to rebuild the same network for inference)."""
    return {"name": model_cfg["name"], "kwargs": dict(model_cfg.get("kwargs") or {})}


def build_model(model_cfg: Mapping, num_classes: int, *, for_training: bool = True) -> nn.Module:
    """The network of a recipe's `model:` section with `num_classes` outputs; `pretrained` / `checkpoint` (through
    `uniformer.create_model`), `drop_path_rate` and `grad_checkpointing` apply only when `for_training`."""
    name = model_cfg["name"]
    kwargs = dict(model_cfg.get("kwargs") or {})
    kwargs["num_classes"] = num_classes
    if for_training and model_cfg.get("drop_path_rate"):
        kwargs["drop_path_rate"] = float(model_cfg["drop_path_rate"])
    checkpoint = model_cfg.get("checkpoint") if for_training else None
    pretrained = bool(model_cfg.get("pretrained")) if for_training else False
    if ":" in name:
        from uniformer.engine.loaders import resolve_callable

        factory = resolve_callable(name, "model.name")
        model = factory(**kwargs)
        if checkpoint:
            load_weights(model, checkpoint)
    else:
        import uniformer

        if checkpoint and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"model.checkpoint: {checkpoint} does not exist")
        model = uniformer.create_model(name, pretrained=pretrained, checkpoint_path=checkpoint,
                                       inflate=model_cfg.get("inflate", "average"), **kwargs)
    if for_training and model_cfg.get("grad_checkpointing"):
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"model.grad_checkpointing: {name} has no set_grad_checkpointing()")
        model.set_grad_checkpointing(True)
    return model


def load_weights(model: nn.Module, path, use_ema: bool = False) -> dict:
    """Load a run checkpoint of this package (model or EMA weights), or any checkpoint
    `uniformer.load_checkpoint` understands; `path` may be a file already read (`CheckpointFile`).
    Returns the run checkpoint's metadata ({} otherwise)."""
    from uniformer.engine.checkpoint import as_checkpoint, load_run_weights
    from uniformer.models.checkpoint import load_state, unwrap_state_dict

    ckpt = as_checkpoint(path)
    if ckpt.run is not None:
        run = load_run_weights(model, ckpt, task="classification", use_ema=use_ema)
        return dict(run["meta"], step=run.get("step"))
    wanted = getattr(getattr(model, "head", None), "out_features", None)
    head = unwrap_state_dict(ckpt.obj)[0].get("head.weight")  # the classifier of an original file, if any
    found = int(head.shape[0]) if head is not None else None
    if wanted is not None and found is not None and found != wanted:
        raise ValueError(f"{ckpt.path} classifies {found} classes, but the model/dataset has {wanted}: a checkpoint "
                         "for evaluation or prediction must carry its own trained classifier")
    load_state(model, ckpt.obj, ckpt.path, meta=ckpt.meta)
    return {}


def merge_outputs(outputs) -> torch.Tensor:
    """One logit tensor from a model's output: a tuple/list of logit sets (light models in training) is averaged."""
    if isinstance(outputs, list | tuple):
        return torch.stack([o.float() for o in outputs]).mean(0)
    return outputs


def classification_loss(outputs, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against hard labels (B,) or soft targets (B×K, e.g. from Mixup), averaged over
    the elements of a tuple output."""
    outs = outputs if isinstance(outputs, list | tuple) else (outputs,)
    losses = []
    for logits in outs:
        logits = logits.float()
        if target.ndim == 2:
            losses.append(torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean())
        else:
            losses.append(F.cross_entropy(logits, target, label_smoothing=label_smoothing))
    return sum(losses) / len(losses)


def model_input_ndim(model: nn.Module) -> int | None:
    """5 for video models (B×C×T×H×W), 4 for image models, None when the model does not say."""
    video = getattr(getattr(model, "module", model), "video", None)
    return None if video is None else 5 if video else 4


def view_logits(model: nn.Module, x: torch.Tensor, expected_ndim: int | None) -> torch.Tensor:
    """B×V×K logits of a batch that may hold V views per sample (one more axis than the model takes; without an
    `expected_ndim`, 6-D input is multi-view video)."""
    multi = x.ndim == expected_ndim + 1 if expected_ndim is not None else x.ndim == 6
    if not multi:
        return merge_outputs(model(x)).float().unsqueeze(1)
    b, v = x.shape[:2]
    return merge_outputs(model(x.reshape(b * v, *x.shape[2:]))).float().reshape(b, v, -1)


def named_classes(names: Sequence[str], num_classes: int) -> list[str]:
    """`names`, or `class_0`... when they are not `num_classes` names."""
    return list(names) if len(names) == num_classes else [f"class_{i}" for i in range(num_classes)]


def read_class_names(path: str | os.PathLike, expected: int | None = None) -> list[str]:
    """One class name per line (blank lines ignored); `expected` checks the count."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if expected is not None and len(names) != expected:
        raise ValueError(f"labels file {path} names {len(names)} classes, but the model has {expected} outputs")
    return names


def data_file(data: Mapping, key: str) -> Path | None:
    """The file `data[key]` names, as given or under `data.root`; None when unset or not found."""
    if not data.get(key):
        return None
    path = Path(str(data[key]))
    if not path.is_file():
        path = Path(str(data.get("root", "."))) / path
    return path if path.is_file() else None


def recipe_complexity(cfg: Mapping) -> dict:
    """Parameters and GFLOPs (batch 1) of the network a resolved recipe builds, at its test input
    (data.num_frames x data.input_size for video models); classes from data.num_classes or class_names."""
    from uniformer.profiling import count_gflops, count_params

    data = cfg["data"]
    num_classes = data.get("num_classes")
    names = data_file(data, "class_names")
    if num_classes is None and names is not None:
        num_classes = len(read_class_names(names))
    model = build_model(cfg["model"], int(num_classes or 1000), for_training=False).eval()
    size = int(data.get("input_size", 224))
    shape = (3, int(data.get("num_frames", 16)), size, size) if model_input_ndim(model) == 5 else (3, size, size)
    return {"model": cfg["model"]["name"], "input": list(shape), "num_classes": int(num_classes or 1000),
            "params": count_params(model), "gflops": count_gflops(model, shape)}

