"""Synthetic datasets, toy models and tiny recipes for the engine and task tests.

Importable by subprocesses too (the tests put this folder and `src/` on PYTHONPATH), which is how a
training run started with `python -m uniformer.cli` or torchrun finds `data.builder:
engine_helpers:build_tiny_clips` and `model.name: engine_helpers:toy_video_net`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
SPLITS = ("train", "val", "test")
KILL_ENV = "UF_TEST_KILL_AFTER_ITEMS"


def tiny_uniformer(name: str = "uniformer_video_small") -> dict:
    """`model:` section of a narrow one-block-per-stage UniFormer (a fresh dict each call)."""
    return {"name": name, "kwargs": {"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}}


class TinyClips(Dataset):
    """Random clips whose class shows as a brighter colour channel; the items of `uniformer.data`.

    cfg keys: sizes {split: n}, classes (K), frames, size, views (test split), fail_every (train items
    whose index is a multiple report a replaced file), noise (train-time noise from torch's RNG).
    With the environment variable UF_TEST_KILL_AFTER_ITEMS=N the process SIGKILLs itself when it
    is about to serve its N-th training item: a hard kill in the middle of an epoch.
    """

    def __init__(self, cfg: dict, split: str):
        self.split = split
        self.n = int(cfg["sizes"][split])
        self.num_classes = int(cfg.get("classes", 3))
        self.classes = [f"class_{chr(97 + i)}" for i in range(self.num_classes)]
        self.frames, self.size = int(cfg.get("frames", 4)), int(cfg.get("size", 32))
        self.views = int(cfg.get("views", 2)) if split == "test" else 0
        self.fail_every = int(cfg.get("fail_every", 0)) if split == "train" else 0
        self.nan_items = set(cfg.get("nan_items", ())) if split == "train" else set()  # clips of NaN: a NaN loss
        self.noise = float(cfg.get("noise", 0.3))
        self.kill_after = int(os.environ.get(KILL_ENV, "0")) if split == "train" else 0
        self.served = 0

    def __len__(self) -> int:
        return self.n

    def _clip(self, index: int, label: int, shift: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(10_000 * SPLITS.index(self.split) + index)
        x = torch.randn(3, self.frames, self.size, self.size, generator=g) * 0.5
        x[label % 3] += 0.8 + 0.4 * (label // 3)
        if shift:
            x = torch.roll(x, shifts=shift, dims=-1)
        return x

    def __getitem__(self, index: int) -> dict:
        if self.kill_after:
            self.served += 1
            if self.served >= self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        label = index % self.num_classes
        if self.views:
            x = torch.stack([self._clip(index, label, shift=4 * v) for v in range(self.views)])
        else:
            x = self._clip(index, label)
            if self.split == "train" and self.noise:
                x = x + self.noise * torch.randn(x.shape)  # global RNG: seeded per worker / restored on resume
        if index in self.nan_items:
            x = torch.full_like(x, float("nan"))
        failures = [f"videos/broken_{index}.mp4"] if self.fail_every and index % self.fail_every == 0 else []
        return {"input": x, "label": label, "index": index, "failures": failures}


def build_tiny_clips(cfg: dict, split: str) -> TinyClips:
    return TinyClips(cfg, split)


class ClipsWithUnusable(TinyClips):
    """TinyClips whose training items listed in cfg `unusable` cannot be trained on: the dataset's collate drops
    them, and a batch of nothing but those is None (0 usable samples), as a dense task's collate does."""

    def __init__(self, cfg: dict, split: str):
        super().__init__(cfg, split)
        self.unusable = set(cfg.get("unusable", ())) if split == "train" else set()

    def __getitem__(self, index: int) -> dict:
        return {**super().__getitem__(index), "usable": index not in self.unusable}

    @staticmethod
    def collate(items: list[dict]):
        from uniformer.data import collate

        kept = [item for item in items if item["usable"]]
        return collate(kept) if kept else None


def build_clips_with_unusable(cfg: dict, split: str) -> ClipsWithUnusable:
    return ClipsWithUnusable(cfg, split)


class ToyVideoNet(nn.Module):
    """conv3d -> GELU -> global mean -> linear: no BatchNorm, no dropout (exact accumulation / DDP tests)."""

    video = True

    def __init__(self, num_classes: int = 3, width: int = 8, **_):
        super().__init__()
        self.conv = nn.Conv3d(3, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.gelu(self.conv(x)).mean((2, 3, 4)))


def toy_video_net(num_classes: int = 3, **kwargs) -> ToyVideoNet:
    return ToyVideoNet(num_classes, **kwargs)


def tiny_recipe(**sections) -> dict:
    """A recipe on TinyClips (12 train, 7 val, 5 test samples) with the toy model; sections override."""
    recipe = {
        "task": "classification",
        "seed": 3,
        "deterministic": True,
        "model": {"name": "engine_helpers:toy_video_net", "kwargs": {}},
        "data": {"builder": "engine_helpers:build_tiny_clips", "sizes": {"train": 12, "val": 7, "test": 5},
                 "classes": 3, "frames": 4, "size": 32, "views": 2},
        "train": {"epochs": 2, "threads": 1, "log_every": 1, "batch_size": 4, "num_workers": 0},
        "optim": {"lr": 0.01, "weight_decay": 0.05},
        "sched": {"warmup_epochs": 0.5, "min_lr": 1e-4},
        "checkpoint": {"keep_last": 2},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(recipe.get(name), dict):
            recipe[name] = {**recipe[name], **values}
        else:
            recipe[name] = values
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                  else []))
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 120, torchrun: int = 0, module: str = "uniformer.cli",
            **env) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` (by default the uniformer commands), under torchrun with `torchrun` processes."""
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               "-m", module, *args]
    else:
        cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout)


def write_moving_videos(root: Path, n_train: int, n_val: int, *, frames: int = 8, size: int = 32,
                        corrupt: int = 0) -> dict:
    """Real MP4 files for `format: video_list`: class 0 = a bar moving right, class 1 = moving left.
    `corrupt` extra train entries point at files that are not videos. Returns a data: section (batch of 4
    and no workers go in the recipe's train: section)."""
    from uniformer.data.video_io import write_video

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lists = {}
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            label = i % 2
            clip = np.empty((frames, size, size, 3), dtype=np.uint8)
            background = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
            start = int(rng.integers(0, size))
            for t in range(frames):
                clip[t] = background
                x = (start + (3 if label == 0 else -3) * t) % size
                clip[t, :, max(0, x - 2):x + 2] = 230
            name = f"{split}_{i}.mp4"
            write_video(root / name, clip, fps=8)
            lines.append(f"{name} {label}")
        if split == "train":
            for j in range(corrupt):
                (root / f"corrupt_{j}.mp4").write_bytes(b"this is not a video" * 10)
                lines.append(f"corrupt_{j}.mp4 {j % 2}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
        lists[split] = str(root / f"{split}.txt")
    (root / "classes.txt").write_text("moves_right\nmoves_left\n")
    return {"format": "video_list", "root": str(root), "train_list": lists["train"], "val_list": lists["val"],
            "class_names": str(root / "classes.txt"), "num_frames": 4, "sampling": "uniform",
            "input_size": size, "short_side": size, "scale_jitter": [size, size + 8], "hflip": False}
