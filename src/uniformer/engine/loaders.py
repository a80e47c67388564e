"""Datasets and DataLoaders for the engine: which builder makes a split, how it is sharded, how it is seeded.

Datasets come from `uniformer.data.build_dataset(data_cfg, split)`, or from any function named
by `data.builder: "package.module:function"` (same signature, same item format) for custom data.
Training shards with `DistributedSampler` (shuffled by seed and epoch, tail dropped so every
process runs the same number of steps); evaluation shards without padding or duplicates, so
metrics gathered from many processes equal those of one. Worker seeds come from a generator
re-seeded from (seed, epoch, rank) each epoch, so a resumed run draws the same augmentations.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["ENGINE_DATA_KEYS", "pipeline_config", "resolve_callable", "build_split", "get_collate",
           "ShardSampler", "TrainLoader", "build_eval_loader", "loader_seed"]

ENGINE_DATA_KEYS = ("builder",)  # data-section keys the engine consumes itself


def pipeline_config(data_cfg: Mapping) -> dict:
    """The `data:` section as handed to `uniformer.data` (engine-only keys removed)."""
    return {k: v for k, v in data_cfg.items() if k not in ENGINE_DATA_KEYS}


def resolve_callable(spec: str, what: str) -> Callable:
    """Import `package.module:attribute`; errors name the option (`what`)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} = {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} = {spec!r}: cannot import {module_name} ({e})") from None
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{what} = {spec!r}: {module_name} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ValueError(f"{what} = {spec!r}: {attr} is not callable")
    return fn


def build_split(data_cfg: Mapping, split: str) -> Dataset:
    """The dataset for `split` ("train", "val" or "test")."""
    builder = data_cfg.get("builder")
    if builder:
        dataset = resolve_callable(builder, "data.builder")(pipeline_config(data_cfg), split)
    else:
        from uniformer.data import build_dataset

        dataset = build_dataset(pipeline_config(data_cfg), split)
    if len(dataset) == 0:
        raise ValueError(f"the {split} split of the dataset is empty (data config: {dict(data_cfg)})")
    return dataset


def get_collate(dataset: Dataset) -> Callable:
    """The dataset's own `collate` if it has one, else `uniformer.data.collate`."""
    own = getattr(dataset, "collate", None)
    if callable(own):
        return own
    from uniformer.data import collate

    return collate


def loader_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729 + 12_345) % (2**63 - 1)


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... : each sample is seen by exactly one process, none repeated."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def _loader_kwargs(data_cfg: Mapping, num_workers: int, device: torch.device) -> dict:
    kw: dict = {"num_workers": num_workers, "pin_memory": bool(data_cfg.get("pin_memory", True))
                and device.type == "cuda"}
    if num_workers > 0:
        if data_cfg.get("prefetch_factor") is not None:
            kw["prefetch_factor"] = int(data_cfg["prefetch_factor"])
        # Fresh workers each epoch (the default) are what makes resumed runs draw identical
        # augmentations; persistent workers trade that for start-up time.
        kw["persistent_workers"] = bool(data_cfg.get("persistent_workers", False))
    return kw


class TrainLoader:
    """A training DataLoader whose shuffling and worker seeds are a function of (seed, epoch, rank)."""

    def __init__(self, dataset: Dataset, data_cfg: Mapping, batch_size: int, seed: int, rank: int, world_size: int,
                 device: torch.device):
        self.dataset, self.seed, self.rank = dataset, seed, rank
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                 drop_last=bool(data_cfg.get("drop_last", True)), collate_fn=get_collate(dataset),
                                 generator=self.generator,
                                 **_loader_kwargs(data_cfg, int(data_cfg.get("num_workers", 4)), device))

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator:
        """An iterator over the batches of `epoch` (0-based)."""
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.generator.manual_seed(loader_seed(self.seed, epoch, self.rank))
        return iter(self.loader)


def build_eval_loader(dataset: Dataset, data_cfg: Mapping, batch_size: int, num_workers: int, rank: int,
                      world_size: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      shuffle=False, drop_last=False, collate_fn=get_collate(dataset),
                      **_loader_kwargs(data_cfg, num_workers, device))
