"""Reading every checkpoint layout the original UniFormer project released or produced.

Layouts: a bare state dict; `{"model": ...}` (image training script, may carry an `argparse.Namespace`);
`{"model_state": ...}` (video training script); `{"state_dict": ...}` with a `backbone.` prefix and heads
beside it (mmdet / mmseg / mmpose); token-labeling weights with `aux_head`; the project's own `.safetensors`
(model name and config in the metadata). 2-D image weights loaded into a video model are inflated over time.
Nothing here executes pickled code: `torch.load(weights_only=True)` with an allow-list of harmless types.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .variants import LIGHT_MODEL_ARGS, MODEL_ARGS

_logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError", "read_checkpoint", "unwrap_state_dict", "checkpoint_filter_fn", "load_checkpoint", "load_state",
    "load_pretrained", "pretrained_file", "identify_variant", "guess_variants", "inflate_weight", "save_safetensors",
]

CLASSIFIER_PREFIXES = ("head.", "head_cls.", "aux_head.")
CLASSIFICATION_ONLY = (*CLASSIFIER_PREFIXES, "norm.", "norm_cls.", "cls_upsample.", "cls_token")
DENSE_NORMS = tuple(f"norm{i}." for i in range(1, 5))


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def _safe_globals() -> list:
    """Types the original checkpoints carry besides tensors: training arguments, numpy scalars."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return [argparse.Namespace, scalar, np.dtype, *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64))]


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """Load a file without running pickled code. Returns (object, safetensors metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as e:  # safetensors raises its own error type for a corrupt header
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the Python object {found.group(1)}" if found else "a Python object outside the allow-list"
        raise CheckpointError(
            f"{path}: refusing to load: the file needs {what}, and loading a checkpoint never executes "
            "pickled code. If you trust the file, re-save its tensors in a Python session (e.g. "
            "`torch.save(torch.load(f, weights_only=False)['model'], 'weights.pth')`, which runs that code).") from None
    except Exception as e:  # truncated or foreign files fail in many ways inside the unpickler
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    return obj, {}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj) -> tuple[dict, dict]:
    """Find the model's tensors inside any original wrapper; return (state_dict, info about the source)."""
    info: dict = {}
    if isinstance(obj, Mapping):
        args = obj.get("args")
        if isinstance(args, argparse.Namespace) and isinstance(getattr(args, "model", None), str):
            info["model"] = args.model
        if isinstance(obj.get("cfg"), str):
            info["cfg"] = obj["cfg"]
        for key in ("model_state", "model", "state_dict", "module"):
            if key in obj and isinstance(obj[key], Mapping):
                info["wrapper"] = key
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        raise CheckpointError("no state dict found (expected tensors, or a 'model', 'model_state' or "
                              "'state_dict' entry holding them)")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):  # detection / segmentation / pose toolboxes
        info["toolbox_heads"] = sorted({k.split(".")[0] for k in sd if not k.startswith("backbone.")})
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd, info


def inflate_weight(weight_2d: torch.Tensor, time: int, mode: str = "average") -> torch.Tensor:
    """2-D kernel (O×I×h×w) → 3-D (O×I×t×h×w): repeated over time and divided by t ("average"),
    or placed on the middle frame with zeros elsewhere ("center")."""
    if mode == "average":
        return weight_2d.unsqueeze(2).repeat(1, 1, time, 1, 1) / time
    if mode == "center":
        out = weight_2d.new_zeros(weight_2d.shape[:2] + (time,) + weight_2d.shape[2:])
        out[:, :, time // 2] = weight_2d
        return out
    raise ValueError(f"inflate={mode!r}: expected 'average' or 'center'")


def checkpoint_filter_fn(state_dict, model: torch.nn.Module, inflate: str = "average") -> dict:
    """Convert any supported layout to this model's state dict (timm's `pretrained_filter_fn`)."""
    sd, _ = unwrap_state_dict(state_dict)
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        target = own.get(k)
        if target is not None and v.ndim == 4 and target.ndim == 5 and v.shape[:2] == target.shape[:2] \
                and v.shape[2:] == target.shape[3:]:
            v = inflate_weight(v, target.shape[2], inflate)
        elif k.endswith("num_batches_tracked") and target is None:
            continue
        out[k] = v
    if getattr(model, "features_only", False):
        # An ImageNet checkpoint into a dense backbone: its classifier and final norm have no place here.
        out = {k: v for k, v in out.items() if not k.startswith(CLASSIFICATION_ONLY)}
    for prefix in CLASSIFIER_PREFIXES:
        w, mine = out.get(prefix + "weight"), own.get(prefix + "weight")
        if w is not None and mine is None and getattr(model, "num_classes", None) == 0:
            _logger.info("the model has no %s (num_classes=0): the checkpoint's is left out", prefix.rstrip("."))
            out = {k: v for k, v in out.items() if not k.startswith(prefix)}
        elif w is not None and mine is not None and w.shape != mine.shape:
            _logger.warning("dropping the checkpoint's classifier %s (%d classes; the model has %d)",
                            prefix.rstrip("."), w.shape[0], mine.shape[0])
            out = {k: v for k, v in out.items() if not k.startswith(prefix)}
    return out


def key_listing(keys: list[str], n: int = 5) -> str:
    """How many keys, and the first `n` of them, for a misfit message."""
    shown = ", ".join(keys[:n])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > n else ''})"


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, inflate: str = "average") -> dict:
    """Load `path` into `model`. Returns the source info; raises CheckpointError on any misfit."""
    obj, meta = read_checkpoint(path)
    return load_state(model, obj, path, inflate, meta)


def load_state(model: torch.nn.Module, obj, path: str | os.PathLike, inflate: str = "average",
               meta: Mapping | None = None) -> dict:
    """`load_checkpoint` of what `read_checkpoint(path)` already returned (`obj`, `meta`): a file is read once."""
    try:
        sd, info = unwrap_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    info.update({k: v for k, v in (meta or {}).items() if k in ("model", "config")})
    converted = checkpoint_filter_fn(sd, model, inflate)
    own = model.state_dict()
    missing = [k for k in own if k not in converted and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in converted if k not in own]
    mismatched = [k for k in converted if k in own and converted[k].shape != own[k].shape]
    allowed_missing = ()
    had_head = any(k.startswith(CLASSIFIER_PREFIXES) for k in sd)
    if had_head and not any(k.startswith(CLASSIFIER_PREFIXES) for k in converted):
        allowed_missing += CLASSIFIER_PREFIXES  # the filter dropped a classifier that does not fit
    if getattr(model, "features_only", False) and not any(k.startswith(DENSE_NORMS) for k in sd):
        allowed_missing += DENSE_NORMS  # an ImageNet checkpoint: the stage norms start fresh
        _logger.info("%s has no dense-prediction norms (norm1..norm4): they keep their initial values", path)
    missing = [k for k in missing if not k.startswith(allowed_missing)]
    if missing or unexpected or mismatched:
        lines = [f"{path} does not fit {type(model).__name__} "
                 f"'{getattr(model, 'pretrained_cfg', {}).get('architecture', '?')}':"]
        if missing:
            lines.append(f"  missing keys: {key_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {key_listing(unexpected)}")
        if mismatched:
            lines.append("  shape mismatches: " + key_listing(
                [f"{k} {tuple(converted[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched], 3))
        lines.append(f"  the checkpoint looks like {identify_variant(sd, info)}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(converted, strict=False)
    return info


# --- recognising the variant a checkpoint belongs to -------------------------------------------
def _architecture_signature(sd: Mapping[str, torch.Tensor]) -> dict:
    first = sd.get("patch_embed1.proj.weight", sd.get("patch_embed1.proj.0.weight"))
    depths, dims = [], []
    for s in range(1, 5):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"blocks{s}\.(\d+)\.", k))}
        depths.append(max(idx) + 1 if idx else 0)
        w = sd.get(f"blocks{s}.0.pos_embed.weight")
        dims.append(int(w.shape[0]) if w is not None else 0)
    return dict(
        video=first is not None and first.ndim == 5,
        light="cls_token" in sd,
        conv_stem="patch_embed1.proj.0.weight" in sd,
        conv_downsample="patch_embed2.proj.0.weight" in sd,
        depths=tuple(depths), dims=tuple(dims),
        layer_scale=any(k.startswith("blocks3.") and "gamma_1" in k for k in sd),
        local_layer_scale=any(k.startswith("blocks1.") and "gamma_1" in k for k in sd),
        aux_head="aux_head.weight" in sd,
        dense="norm1.weight" in sd and "head.weight" not in sd,
    )


def _variant_table() -> dict[str, dict]:
    table = {}
    for name, args in {**MODEL_ARGS, **LIGHT_MODEL_ARGS}.items():
        light = name in LIGHT_MODEL_ARGS
        table[name] = dict(
            video=args.get("video", False), light=light,
            conv_stem=light or args.get("stem") == "conv",
            conv_downsample=args.get("downsample") == "conv",
            depths=tuple(args.get("depths")), dims=tuple(args.get("embed_dims", (64, 128, 320, 512))),
            layer_scale=args.get("layer_scale") is not None,
            aux_head=bool(args.get("aux_head")),
        )
    return table


def guess_variants(sd: Mapping[str, torch.Tensor], info: Mapping | None = None) -> list[str]:
    """Registered variants whose architecture matches the state dict (head_dim cannot be read from weights)."""
    info = info or {}
    named = str(info.get("model") or "").split(".")[0]
    table = _variant_table()
    if named in table:
        return [named]
    sig = _architecture_signature(sd)
    keys = ("video", "light", "conv_stem", "conv_downsample", "depths", "dims", "aux_head")
    return [n for n, t in table.items() if all(t[k] == sig[k] for k in keys)
            and (sig["light"] or t["layer_scale"] == sig["layer_scale"])]


def identify_variant(sd: Mapping[str, torch.Tensor], info: Mapping | None = None) -> str:
    """A readable guess of the model a state dict was saved from, e.g. 'uniformer_small_plus_dim64'."""
    info = info or {}
    names = guess_variants(sd, info)
    sig = _architecture_signature(sd)
    if not names:
        return (f"an unknown UniFormer layout (depths {sig['depths']}, widths {sig['dims']}, "
                f"{'video' if sig['video'] else 'image'})")
    notes = []
    if info.get("model"):
        notes.append("named in the checkpoint")
    head_dim = re.search(r"HEAD_DIM:\s*(\d+)", str(info.get("cfg", "")))
    if set(names) == {"uniformer_small_plus", "uniformer_small_plus_dim64"}:
        notes.append("head_dim 32 or 64 cannot be read from the weights: uniformer_small_plus has 32, "
                     "uniformer_small_plus_dim64 has 64")
    if sig["aux_head"]:
        notes.append("a token-labeling checkpoint: aux_head=True"
                     + ("" if "large" in names[0] else ", head_dim=32 as released"))
    if sig["local_layer_scale"] and sig["light"]:
        notes.append("layer-scaled blocks: pass layer_scale=True")
    if head_dim:
        notes.append(f"head_dim={head_dim.group(1)} per its config")
    if sig["dense"]:
        notes.append("a dense-prediction backbone: pass features_only=True")
    text = " or ".join(names)
    return text + (f" ({'; '.join(notes)})" if notes else "")


# --- pretrained weights ------------------------------------------------------------------------
def pretrained_file(cfg: Mapping, how: str | None = None) -> str:
    """The local file of a pretrained config: its `file`, else the hub download (cached), else its URL.

    `how` tells the caller's way of passing a local file instead (the error says the Python one by default).
    """
    name = f"{cfg.get('architecture')}.{cfg.get('tag')}"
    if cfg.get("file"):
        return str(cfg["file"])
    how = "No network? Download it elsewhere and pass the file: " + (how or (
        f"uniformer.create_model('{cfg.get('architecture')}', checkpoint_path='FILE') or "
        f"pretrained_cfg_overlay=dict(file='FILE')."))
    if cfg.get("hf_hub_id"):
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(cfg["hf_hub_id"], cfg["hf_hub_filename"])
        except Exception as e:  # offline, missing file, no access
            raise CheckpointError(
                f"could not fetch the weights of {name} from the Hugging Face hub "
                f"({cfg['hf_hub_id']}/{cfg['hf_hub_filename']}): {type(e).__name__}. {how}") from None
    if cfg.get("url"):
        try:
            from timm.models._hub import download_cached_file

            return download_cached_file(cfg["url"])
        except Exception as e:
            raise CheckpointError(f"could not download {cfg['url']}: {type(e).__name__}. {how}") from None
    raise CheckpointError(f"{name} has no released weights. {how}")


def load_pretrained(model: torch.nn.Module, inflate: str = "average") -> dict:
    """Resolve the model's pretrained config (local file, hub or URL) and load it with the converter."""
    return load_checkpoint(model, pretrained_file(model.pretrained_cfg), inflate)


def save_safetensors(model: torch.nn.Module, path: str | os.PathLike, name: str, config: Mapping) -> None:
    """The project's own format: tensors plus the model name and constructor config in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "uniformer", "model": name,
                                            "config": json.dumps(dict(config), sort_keys=True)})
