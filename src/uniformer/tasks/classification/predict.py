"""Classification inference on files: a model from any checkpoint plus its data pipeline's test view.

`load_predictor` builds the model behind a training checkpoint of this package or an original one;
`predict_files` returns top-k classes for image and video files, averaging over test views.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Predictor", "load_predictor", "predict_files", "VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# data-pipeline keys that shape the test-time view of a clip (carried over from a training checkpoint)
TRANSFORM_KEYS = ("num_frames", "sampling", "stride", "input_size", "short_side", "test_clips", "test_crops",
                  "mean", "std", "video_ext", "decode_threads")


@dataclass
class Predictor:
    """A model ready for inference plus what is needed to read files the way its data pipeline does."""

    model: Any  # torch.nn.Module in eval mode
    classes: list[str]
    data_cfg: dict  # data: section for the pipeline's test transform
    device: Any  # torch.device
    is_video: bool
    dataset: str | None = None  # the dataset the classifier was trained on, when known
    dtype: str = "float32"  # resolved: float32, or bfloat16 / float16 autocast


def _default_data_cfg(is_video: bool) -> dict:
    if is_video:  # the UniFormer Kinetics test view: 16 frames 4 apart, short side 256, centre crop 224
        return {"format": "video_list", "num_frames": 16, "sampling": "dense", "stride": 4, "input_size": 224,
                "short_side": 256, "test_clips": 1, "test_crops": 1}
    return {"format": "image_list", "input_size": 224, "short_side": 256, "test_crops": 1}


def _released_weights_of(model_name: str | None) -> tuple[Any, str | None]:
    """(released weights or None, full `NAME.TAG`) for `NAME.TAG` or a bare name (its default tag)."""
    if not model_name:
        return None, model_name
    import timm

    from uniformer.models.released import released_weights

    name, _, tag = model_name.partition(".")
    if not tag:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
        tag = getattr(cfg, "tag", None) or ""
    full = f"{name}.{tag}" if tag else name
    return released_weights(full), full


def _fetch_released(full_name: str) -> str:
    import timm

    from uniformer.models.checkpoint import CheckpointError, pretrained_file
    from uniformer.models.released import released_weights

    cfg = timm.models.get_pretrained_cfg(full_name).to_dict()
    cfg.update(architecture=full_name.split(".")[0], tag=full_name.split(".")[1])
    try:
        return pretrained_file(cfg, how=f"uniformer predict --model {full_name} --checkpoint FILE INPUT...")
    except CheckpointError as e:
        if released_weights(full_name).confirmed:
            raise
        raise CheckpointError(f"{e} (The hub file name of {full_name} is the original model zoo's and could not "
                              "be confirmed on the hub: `uniformer models --pretrained`.)") from None


def load_predictor(checkpoint: str | os.PathLike | None = None, model_name: str | None = None,
                   labels: str | None = None, device: str | None = None, data_overrides: Mapping | None = None,
                   use_ema: bool = False, model_options: Mapping | None = None, runtime: str = "torch",
                   dtype: str = "auto") -> Predictor:
    """Build the model behind `checkpoint` (a training checkpoint of this engine or any original one), or
    the released weights `model_name` names (`NAME.TAG`, fetched from the hub when no checkpoint is given).

    A released tag also sets the test recipe the original evaluated with (frames, stride, short side,
    crops × clips) and the class names of its dataset. `model_options` (depths, embed_dims, ...) describe
    the architecture of an original checkpoint; training checkpoints record theirs. `data_overrides`
    adjust the test transform (num_frames, ...); `labels` (a file, one name per line) overrides the names.
    `runtime` "onnxruntime" / "openvino" runs the fused model's export there (CPU, float32);
    `dtype` "auto" autocasts to bfloat16 only where that is fast (`uniformer.engine.precision`).
    """

    from uniformer.data import class_names
    from uniformer.engine.checkpoint import read_checkpoint
    from uniformer.engine.distributed import resolve_device
    from uniformer.engine.precision import resolve_dtype

    from . import (
        build_model,
        checkpoint_num_classes,
        load_weights,
        model_input_ndim,
        read_class_names,
    )

    dev = resolve_device(device)  # an unavailable device fails before any download
    released, full_name = None, model_name  # a bare name with a checkpoint: no tag, no recipe assumed
    if checkpoint is None or "." in (model_name or ""):
        released, full_name = _released_weights_of(model_name)
    if checkpoint is None:
        if released is None:
            raise ValueError(f"--checkpoint is needed: {model_name or 'no --model'} names no released weights "
                             "(`uniformer models --pretrained` lists the tags, e.g. uniformer_video_small.k400_16x8)")
        checkpoint = _fetch_released(full_name)
    path = Path(checkpoint)
    obj = read_checkpoint(path)
    if obj is not None and obj["task"] != "classification":
        raise ValueError(f"{path}: this is a {obj['task']} checkpoint; use it with `uniformer predict` (which reads "
                         "the task from the checkpoint)")
    dataset = released.dataset if released else None
    if obj is not None:
        spec = obj["meta"]["model_spec"]
        if model_name and model_name.split(".")[0] != spec["name"]:
            raise ValueError(f"--model {model_name}: {path} was trained as {spec['name']}")
        if model_options:
            raise ValueError(f"-o model options are for original checkpoints; {path} records its architecture "
                             f"({spec['kwargs']})")
        model_cfg = {"name": spec["name"], "kwargs": spec["kwargs"]}
        num_classes = int(obj["meta"]["num_classes"])
        classes = list(obj["meta"].get("classes") or [])
        recorded = (obj.get("config") or {}).get("data", {})
        data_cfg = {} if recorded.get("builder") else {k: v for k, v in recorded.items()
                                                       if k in TRANSFORM_KEYS or k == "format"}
    else:
        if not model_name:
            raise ValueError(f"--model is needed: {path} is not a run checkpoint of this package, so it does "
                             "not record which model it holds")
        model_cfg = {"name": full_name, "kwargs": dict(model_options or {})}
        num_classes = checkpoint_num_classes(path)
        if num_classes is None:
            raise ValueError(f"{path} has no classifier ('head.weight'); predict needs a classification checkpoint")
        if released is not None and num_classes != released.num_classes:
            raise ValueError(f"{path} classifies {num_classes} classes, but {full_name} is a {released.dataset} "
                             f"model with {released.num_classes}")
        classes = class_names(dataset) if dataset else []
        data_cfg = released.data_config() if released else {}
    if labels:
        classes = read_class_names(labels, expected=num_classes)
        dataset = None
    if len(classes) != num_classes:
        classes = [f"class_{i}" for i in range(num_classes)]
    model = build_model(model_cfg, num_classes, for_training=False)
    load_weights(model, path, use_ema=use_ema)
    model.to(dev).eval()
    is_video = model_input_ndim(model) == 5
    fmt = data_cfg.get("format")
    if fmt is not None and (fmt in ("video_list", "sthv2")) != is_video:
        data_cfg = {}
    cfg = {**_default_data_cfg(is_video), **{k: v for k, v in data_cfg.items() if k != "format"}}
    cfg["format"] = "video_list" if is_video else "image_list"
    cfg.update(dict(data_overrides or {}))
    if runtime != "torch":
        model = _runtime_model(model, runtime, cfg, is_video, dev, dtype)
        dtype = "float32"
    return Predictor(model, classes, cfg, dev, is_video, dataset, resolve_dtype(dtype, dev))


def _runtime_model(model, runtime: str, cfg: dict, is_video: bool, device, dtype: str):
    """The fused model exported for `runtime` at the test view's input size (any batch)."""
    import tempfile

    from uniformer.deploy import export_for_runtime
    from uniformer.models.fuse import fuse

    if device.type != "cpu" or dtype == "bfloat16":
        raise ValueError(f"--runtime {runtime} runs float32 on the CPU: drop --device {device} / --dtype {dtype}")
    size = cfg["input_size"]
    shape = (3, cfg["num_frames"], size, size) if is_video else (3, size, size)
    with tempfile.TemporaryDirectory(prefix=f"uniformer_{runtime}_") as workdir:  # loaded into memory
        return export_for_runtime(fuse(model), runtime, shape, workdir)


def _kind_of(path: str) -> str:
    ext = Path(path).suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return "unknown"


def predict_files(predictor: Predictor, inputs: Sequence[str], topk: int = 5,
                  figures: str | os.PathLike | None = None) -> list[dict]:
    """Top-k classes with probabilities for each image or video file (the test-split transform of the
    data pipeline: multi-view inputs are averaged over views). Unreadable inputs get an `error`.

    With `figures` (a folder), each input also gets `<stem>.png`: the sampled frames above a bar chart of
    the top five classes (its path in the result's `figure`)."""
    import torch

    from uniformer.data import build_dataset
    from uniformer.engine.precision import autocast_dtype

    from . import model_input_ndim, view_logits
    from .metrics import view_probabilities

    results: list[dict] = [{"input": p, "predictions": [], "error": None} for p in inputs]
    wanted = "video" if predictor.is_video else "image"
    todo: list[int] = []
    for i, p in enumerate(inputs):
        kind = _kind_of(p)
        if not Path(p).is_file():
            results[i]["error"] = "file not found"
        elif kind != wanted:
            results[i]["error"] = (f"the model is a {wanted} model but this is "
                                   f"{'an unrecognised file type' if kind == 'unknown' else f'a {kind}'}"
                                   f" (known {wanted} extensions: "
                                   f"{', '.join(VIDEO_EXTENSIONS if wanted == 'video' else IMAGE_EXTENSIONS)})")
        else:
            todo.append(i)
    if not todo:
        return results
    k = min(topk, len(predictor.classes))
    with tempfile.TemporaryDirectory(prefix="uniformer_predict_") as tmp:
        list_file = Path(tmp) / "inputs.txt"
        list_file.write_text("".join(f"{os.path.abspath(inputs[i])} 0\n" for i in todo))
        cfg = {**predictor.data_cfg, "root": "/", "test_list": str(list_file), "max_retries": 0,
               "num_classes": 1, "skip_missing": False}
        for key in ("train_list", "val_list", "class_names"):
            cfg.pop(key, None)
        dataset = build_dataset(cfg, "test")
        expected = model_input_ndim(predictor.model)
        for pos, i in enumerate(todo):
            try:
                item = dataset[pos]
            except Exception as e:  # a file the pipeline cannot decode: name the user's file, not the list
                reason = str(e).replace(str(list_file), "the input list").replace(os.path.abspath(inputs[i]),
                                                                                 inputs[i])
                results[i]["error"] = f"cannot read {inputs[i]}: {reason}"
                continue
            x = item["input"].unsqueeze(0).to(predictor.device)
            amp = autocast_dtype(predictor.dtype)
            with torch.no_grad(), torch.autocast(predictor.device.type, dtype=amp, enabled=amp is not None):
                logits = view_logits(predictor.model, x, expected)
                probs = view_probabilities(logits, predictor.data_cfg.get("view_aggregation", "sum_logits"))[0].cpu()
            top = probs.topk(k)
            results[i]["predictions"] = [{"label": predictor.classes[c], "index": int(c), "prob": float(pr)}
                                         for pr, c in zip(top.values.tolist(), top.indices.tolist())]
            results[i]["views"] = int(x.shape[1]) if x.ndim == (expected or 5) + 1 else 1
            if figures is not None:
                results[i]["figure"] = _save_figure(predictor, item["input"], probs, inputs[i], Path(figures))
    return results


def _save_figure(predictor: Predictor, x, probs, source: str, folder: Path) -> str:
    from uniformer.data import IMAGENET_MEAN, IMAGENET_STD

    from .visualize import sampled_frames, save_prediction_figure

    folder.mkdir(parents=True, exist_ok=True)
    top = probs.topk(min(5, len(predictor.classes)))
    shown = [{"label": predictor.classes[c], "prob": float(p)} for p, c in zip(top.values.tolist(),
                                                                                top.indices.tolist())]
    frames = sampled_frames(x, predictor.is_video, predictor.data_cfg.get("mean", IMAGENET_MEAN),
                            predictor.data_cfg.get("std", IMAGENET_STD))
    path = folder / f"{Path(source).stem}.png"
    save_prediction_figure(path, frames, shown, title=Path(source).name)
    return str(path)
