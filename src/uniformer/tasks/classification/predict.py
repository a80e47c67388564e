"""What `uniformer.tasks.open` and `Task.predict` need: the recipe of released weights or of an original file, the
test view of the data pipeline, and top-k classes of files read through it (`predict_paths`)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
def released_of(model_name: str | None) -> tuple[Any, str | None]:
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


def fetch_released(full_name: str) -> str:
    """The local file of released weights `NAME.TAG` (the hub's cache, downloaded when missing)."""
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


def _num_classes(ckpt) -> int:
    from uniformer.models.checkpoint import unwrap_state_dict

    head = unwrap_state_dict(ckpt.obj)[0].get("head.weight")
    if head is None:
        raise ValueError(f"{ckpt.path} has no classifier ('head.weight'); predict needs a classification checkpoint")
    return int(head.shape[0])


def original_recipe(ckpt, model_name: str | None, released, full_name: str | None,
                    model_options: Mapping | None) -> tuple[dict, dict]:
    """(recipe mapping, meta) of an original classification file (`ckpt`, read once) of `model_name`, with the
    released tag's test view and dataset classes when the tag is known."""
    from uniformer.data import class_names

    from .model import named_classes

    if not model_name:
        raise ValueError(f"--model is needed: {ckpt.path} is not a run checkpoint of this package, so it does "
                         "not record which model it holds")
    num_classes = _num_classes(ckpt)
    if released is not None and num_classes != released.num_classes:
        raise ValueError(f"{ckpt.path} classifies {num_classes} classes, but {full_name} is a {released.dataset} "
                         f"model with {released.num_classes}")
    dataset = released.dataset if released else None
    classes = named_classes(class_names(dataset) if dataset else [], num_classes)
    model_cfg = {"name": full_name, "kwargs": dict(model_options or {})}
    data = released.data_config() if released else {}
    recipe = {"task": "classification", "model": model_cfg, "data": data or {"format": "image_list"}}
    meta = {"num_classes": num_classes, "classes": classes, "model_spec": model_cfg, "dataset": dataset}
    return recipe, meta


def original_meta(ckpt, cfg: Mapping) -> dict:
    """`meta` of a classification recipe given with an original file (read once): the classifier size of the
    file, the class names of the recipe's `data.class_names` when they are as many."""
    from .model import data_file, model_spec, named_classes, read_class_names

    num_classes = _num_classes(ckpt)
    path = data_file(cfg["data"], "class_names")
    classes = named_classes(read_class_names(path) if path else [], num_classes)
    return {"num_classes": num_classes, "classes": classes, "model_spec": model_spec(cfg["model"])}


def inference_data_cfg(recorded: Mapping, is_video: bool, overrides: Mapping | None = None) -> dict:
    """The `data:` keys that read one file as the recorded recipe's test split reads its samples
    (`uniformer.data.file_reading_config`: format defaults such as BGR for Something-Something kept), or the
    original's Kinetics / ImageNet test view when the recipe is of the other modality or a custom builder;
    `overrides` on top."""
    from uniformer.data.config import VIDEO_FORMATS, file_reading_config

    fmt = recorded.get("format")
    usable = not recorded.get("builder") and fmt is not None and (fmt in VIDEO_FORMATS) == is_video
    fallback = {"format": "video_list" if is_video else "image_list"}
    return {**file_reading_config(recorded if usable else fallback), **(overrides or {})}


def _kind_of(path: str) -> str:
    ext = Path(path).suffix.lower()
    return "video" if ext in VIDEO_EXTENSIONS else "image" if ext in IMAGE_EXTENSIONS else "unknown"


def _top(probs, classes: Sequence[str], k: int) -> list[dict]:
    top = probs.topk(min(k, len(classes)))
    return [{"label": classes[c], "index": int(c), "prob": float(p)}
            for p, c in zip(top.values.tolist(), top.indices.tolist())]


def predict_paths(model, inputs: Sequence[str], classes: Sequence[str], data_cfg: Mapping, is_video: bool,
                  topk: int = 5, figures: str | os.PathLike | None = None, dtype: str = "float32") -> list[dict]:
    """Top-k classes with probabilities for each image or video file, read by the data pipeline's test split
    (views combined as `data_cfg["view_aggregation"]` says). Unreadable inputs get an `error`. With `figures`
    (a folder), each input also gets `<stem>.png`: the sampled frames above the top five classes."""
    import torch

    from uniformer.data import build_dataset
    from uniformer.precision import autocast_dtype

    from .metrics import view_probabilities
    from .model import model_input_ndim, view_logits

    results: list[dict] = [{"input": p, "predictions": [], "error": None} for p in inputs]
    wanted = "video" if is_video else "image"
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
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    expected = model_input_ndim(model) or (5 if is_video else 4)
    amp = autocast_dtype(dtype)
    with tempfile.TemporaryDirectory(prefix="uniformer_predict_") as tmp:
        list_file = Path(tmp) / "inputs.txt"
        list_file.write_text("".join(f"{os.path.abspath(inputs[i])} 0\n" for i in todo))
        cfg = {k: v for k, v in data_cfg.items() if k not in ("train_list", "val_list", "class_names")}
        cfg.update(root="/", test_list=str(list_file), max_retries=0, num_classes=1, skip_missing=False)
        dataset = build_dataset(cfg, "test")
        for pos, i in enumerate(todo):
            try:
                item = dataset[pos]
            except Exception as e:  # a file the pipeline cannot decode: name the user's file, not the list
                reason = str(e).replace(str(list_file), "the input list").replace(os.path.abspath(inputs[i]),
                                                                                 inputs[i])
                results[i]["error"] = f"cannot read {inputs[i]}: {reason}"
                continue
            x = item["input"].unsqueeze(0).to(device)
            with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = view_logits(model, x, expected)
                probs = view_probabilities(logits, data_cfg.get("view_aggregation", "sum_logits"))[0].cpu()
            results[i]["predictions"] = _top(probs, classes, topk)
            results[i]["views"] = int(x.shape[1]) if x.ndim == expected + 1 else 1
            if figures is not None:
                results[i]["figure"] = _save_figure(classes, data_cfg, is_video, item["input"], probs, inputs[i],
                                                    Path(figures))
    return results


def _save_figure(classes, data_cfg: Mapping, is_video: bool, x, probs, source: str, folder: Path) -> str:
    from uniformer.data import IMAGENET_MEAN, IMAGENET_STD

    from .visualize import sampled_frames, save_prediction_figure

    folder.mkdir(parents=True, exist_ok=True)
    frames = sampled_frames(x, is_video, data_cfg.get("mean", IMAGENET_MEAN), data_cfg.get("std", IMAGENET_STD))
    path = folder / f"{Path(source).stem}.png"
    save_prediction_figure(path, frames, _top(probs, classes, 5), title=Path(source).name)
    return str(path)
