"""Helpers of the dense-task tests: tiny backbones, tiny recipes, broken files, original-layout checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_BACKBONE = {"name": "uniformer_small", "drop_path_rate": 0.0,
                 "kwargs": {"depths": [1, 1, 2, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}}


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def write_garbage_image(path: Path) -> Path:
    """A file with an image suffix that no decoder can read."""
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" + bytes(range(64)))
    return path


def save_original_checkpoint(path: Path, sections: dict[str, dict[str, torch.Tensor]]) -> Path:
    """An mmdet / mmseg / mmpose style file: {"meta": ..., "state_dict": {"<section>.<key>": tensor}}."""
    state = {}
    for prefix, sd in sections.items():
        state.update({f"{prefix}.{k}": v.clone() for k, v in sd.items()})
    torch.save({"meta": {"mmcv_version": "1.3.8", "epoch": 12}, "state_dict": state}, path)
    return path


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def losses_fell(history: list[dict], key: str = "loss") -> tuple[float, float]:
    """Mean of the first and of the last third of the logged losses."""
    values = [h[key] for h in history]
    n = max(1, len(values) // 3)
    return sum(values[:n]) / n, sum(values[-n:]) / n
