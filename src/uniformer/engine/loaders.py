"""DataLoaders of the runner: how a split is sharded over processes and how its augmentations are seeded.

Every training sample is loaded under a seed from (seed, epoch, place in the epoch's permutation), so
augmentations depend neither on the workers nor on where a resumed run restarts. Evaluation shards without
padding or duplicates, so metrics merged from many processes equal those of one. Optional dataset attributes:
`samples_per_item` (`data.num_sample`) and `epoch_repeats` (`data.repeated_aug`, DeiT's RASampler).
"""
from __future__ import annotations

import pkgutil
import random
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def resolve_callable(spec: str, what: str) -> Callable:
    """Import `package.module:attribute`; errors name the option (`what`)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} = {spec!r}: expected 'package.module:function'")
    try:
        fn = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} = {spec!r}: cannot import it ({e})") from None
    if not callable(fn):
        raise ValueError(f"{what} = {spec!r}: {attr} is not callable")
    return fn


def items_per_batch(dataset: Dataset, batch_size: int) -> int:
    """Dataset items per training batch of `batch_size` samples (an item may hold several, `samples_per_item`)."""
    per_item = int(getattr(dataset, "samples_per_item", 1) or 1)
    if batch_size % per_item:
        raise ValueError(f"train.batch_size = {batch_size} is not a multiple of the {per_item} clips each training "
                         "item holds (data.num_sample): a batch must hold whole items")
    return batch_size // per_item


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSampler(Sampler):
    """(index, sample seed) pairs of one process's shard of epoch `epoch`, from position `start` on."""

    def __init__(self, length: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 repeats: int = 0):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(length, generator=g)
        if repeats > 1:  # RASampler: each index `repeats` times in a row, dealt round-robin over the processes
            order = order.repeat_interleave(repeats)
        order = order[:length // world_size * world_size]  # the tail is dropped: every process runs as many steps
        self.indices = order[rank::world_size].tolist()[start:]
        # a sample's seed depends on its place in the epoch's permutation, not on the process that loads it:
        # the same global batch gets the same augmentations with one process or many
        places = range(rank + start * world_size, len(order), world_size)
        self.seeds = [(seed * 1_000_003 + epoch * 7_919 + place * 31 + 12_345) % 2**62 for place in places]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self.indices, self.seeds))

    def __len__(self) -> int:
        return len(self.indices)


class SeededDataset(Dataset):
    """`dataset[index]` computed under a given seed; the caller's generator states are left as they were."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        seed_everything(seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


def _loader_kwargs(train_cfg: Mapping, num_workers: int, device: torch.device) -> dict:
    kw: dict = {"num_workers": num_workers, "pin_memory": bool(train_cfg["pin_memory"]) and device.type == "cuda"}
    if num_workers > 0 and train_cfg["prefetch_factor"] is not None:
        kw["prefetch_factor"] = int(train_cfg["prefetch_factor"])
    return kw


def train_loader(dataset: Dataset, collate: Callable, train_cfg: Mapping, seed: int, epoch: int, rank: int,
                 world_size: int, device: torch.device, start_batch: int = 0) -> DataLoader:
    """The batches of one process for `epoch` (0-based), starting at batch `start_batch` (a resumed run); a batch
    holds `train.batch_size` samples (`items_per_batch` dataset items)."""
    batch_size = items_per_batch(dataset, int(train_cfg["batch_size"]))
    sampler = EpochSampler(len(dataset), seed, epoch, rank, world_size, start_batch * batch_size,
                           int(getattr(dataset, "epoch_repeats", 0) or 0))
    return DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=sampler, drop_last=True,
                      collate_fn=collate, **_loader_kwargs(train_cfg, int(train_cfg["num_workers"]), device))


class IndexedDataset(Dataset):
    """(index, sample) items: evaluation keeps track of which sample a prediction belongs to."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]


def eval_loader(dataset: Dataset, collate: Callable, batch_size: int, num_workers: int, train_cfg: Mapping,
                rank: int, world_size: int, device: torch.device, indices: Sequence[int] | None = None) -> DataLoader:
    """This process's shard of `dataset` (or the given `indices`), in order, every sample once, as
    `collate([(index, sample), ...])` batches."""
    sampler = list(indices) if indices is not None else range(rank, len(dataset), world_size)
    return DataLoader(IndexedDataset(dataset), batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      **_loader_kwargs(train_cfg, num_workers, device))
