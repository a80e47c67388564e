"""One process or many (torchrun: NCCL on GPUs, gloo on CPUs): device choice, process-group set-up and the few
collectives the engine uses (single-process no-ops without torchrun).

After an elastic restart (`torchrun --max-restarts`) torchrun's rendezvous store still holds the dead group's
gloo/NCCL addresses under the same keys, and new ranks reading them time out ("Gloo connectFullMesh failed").
So every group first agrees on a fresh generation number and builds its process group under its own prefix.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from uniformer.engine.config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank among `world_size` processes and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this code created the process group (and so tears it down)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """`None`/"auto": the local GPU when there is one, else the CPU; "cuda" picks the local rank's GPU."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (if any) and pick the device."""
    world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    dev = resolve_device(device, _env_int("LOCAL_RANK", 0))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        store, rank, world = _fresh_group_store(rank, world)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, device=dev, owns_group=owns)


_GENERATION = "uniformer/generation"


def _fresh_group_store(rank: int, world: int,
                       timeout: timedelta = timedelta(minutes=30)) -> tuple[dist.Store, int, int]:
    """The rendezvous store of torchrun's environment (env://), under a prefix no earlier group used."""
    store, rank, world = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
    store.set_timeout(timeout)
    return dist.PrefixStore(f"uniformer/{agree_generation(store, rank, world, timeout)}/group", store), rank, world


def agree_generation(store: dist.Store, rank: int, world: int, timeout: timedelta = timedelta(minutes=30),
                     poll: float = 0.5) -> int:
    """A number that the `world` processes calling this on `store` agree on and that no earlier group got.

    Rank 0 draws the next number (an atomic `add`) and acknowledges every rank's nonce offered under it; an
    offer under a dead group's number goes unanswered and is renewed under the number read next.
    """
    if rank == 0:
        generation = store.add(_GENERATION, 1)
        for peer in range(1, world):
            key = f"uniformer/{generation}/offer/{peer}"
            store.wait([key], timeout)
            store.set(f"uniformer/ack/{store.get(key).decode()}", str(generation))
        return generation
    deadline = time.monotonic() + timeout.total_seconds()
    nonce, offered = uuid.uuid4().hex, None
    while True:
        current = store.add(_GENERATION, 0)
        if current and current != offered:
            store.set(f"uniformer/{current}/offer/{rank}", nonce)
            offered = current
        if offered is not None:
            try:
                store.wait([f"uniformer/ack/{nonce}"], timedelta(seconds=poll))
                return int(store.get(f"uniformer/ack/{nonce}"))
            except RuntimeError:  # DistStoreError: not answered (yet): a dead group's number, or early
                pass
        else:
            time.sleep(poll / 5)
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank}: rank 0 did not start a process group within {timeout} "
                               f"(MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
                               f"MASTER_PORT={os.environ.get('MASTER_PORT')})")


def shutdown_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a short list of numbers over all processes (float64, so counts stay exact)."""
    if not _active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj) -> list:
    """Every process's `obj` (picklable), in rank order."""
    if not _active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def disagreements(values: Mapping[str, Any]) -> dict[str, list]:
    """The entries of `values` that differ between processes, as {name: [value on each rank]} (a collective)."""
    if not _active():
        return {}
    views = all_gather_objects(dict(values))
    return {name: [v.get(name) for v in views] for name in values if any(v.get(name) != views[0].get(name)
                                                                        for v in views)}


def per_rank(values: list) -> str:
    """"2 on ranks 0, 2; 3 on rank 1": the ranks grouped by the value they hold."""
    groups: dict[str, list[int]] = {}
    for rank, value in enumerate(values):
        groups.setdefault(repr(value), []).append(rank)
    return "; ".join(f"{value} on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
                     for value, ranks in groups.items())


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


def check_same_recipe_and_data(recipe: Mapping, sizes: Mapping[str, int | None]) -> None:
    """Stop every process, naming the difference, when they resolved different recipes or see splits of
    different sizes (they would wait on each other forever)."""
    if not _active():
        return
    problems = []
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=repr).encode()).hexdigest()
    if disagreements({"recipe": digest}):
        flat = all_gather_objects(_flatten(recipe))
        keys = sorted(set().union(*flat))
        problems += [f"recipe key {key} = {per_rank([f.get(key, '<unset>') for f in flat])}"
                     for key in keys if any(f.get(key, "<unset>") != flat[0].get(key, "<unset>") for f in flat)]
    differ = disagreements({f"{split} split size": n for split, n in sizes.items()})
    problems += [f"{name} = {per_rank(values)}" for name, values in differ.items()]
    if problems:
        shown = problems[:8] + ([f"and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ConfigError(f"the {dist.get_world_size()} processes disagree on the recipe or the data: "
                          + " | ".join(shown) + " (every process must resolve the same recipe and read the same "
                          "data: the same files, overrides and list files on every node)")


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every process: all evaluate and save the same network."""
    if not _active():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def _same_layout(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor | None:
    """`grad` with `param`'s strides where they differ only on size-1 dimensions (the same memory, no copy)."""
    if grad.stride() == param.stride() or grad.shape != param.shape:
        return None
    if any(n != 1 and a != b for n, a, b in zip(grad.shape, grad.stride(), param.stride())):
        return None  # a real layout difference: autograd's layout contract copies it into the parameter's
    return grad.as_strided(grad.shape, param.stride(), grad.storage_offset())


def sync_batchnorm(model: torch.nn.Module, which: bool | list[str], *, convert: bool) -> torch.nn.Module:
    """`train.sync_bn`: every BatchNorm (`True`) or those of the named top-level parts (the original dense heads
    used SyncBN, their backbones not). Names are checked on every run; layers converted only where `convert`."""
    if not which:
        return model
    if which is not True:
        parts = dict(model.named_children())
        unknown = [name for name in which if name not in parts]
        if unknown:
            raise ConfigError(f"train.sync_bn names {unknown}, which the model does not have (its parts: "
                              f"{', '.join(parts)})")
    if not convert:
        return model
    if which is True:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name in which:
        setattr(model, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(getattr(model, name)))
    return model


def align_grad_strides(module: torch.nn.Module) -> list:
    """Give every gradient of `module` its parameter's strides before DistributedDataParallel reads it.

    A depthwise weight (C x 1 x k x k) fed channels-last maps gets a gradient with another stride on the size-1
    axis: the same memory, but DDP warns "Grad strides do not match bucket view strides" and copies on every
    step. Returns the hook handles."""
    handles = []
    for param in module.parameters():
        if param.requires_grad and 1 in param.shape and param.ndim > 1:
            handles.append(param.register_hook(lambda grad, param=param: _same_layout(grad, param)))
    return handles


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """`torch.set_num_threads(threads)` for a block (None: leave as is)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
