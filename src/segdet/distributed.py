"""Data-parallel training under ``torchrun`` (``torch.distributed`` + DistributedDataParallel).

A training stage started by ``torchrun`` (``python -m segdet.launch``, chosen by ``base.nproc_per_node``) finds
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` in its environment; :func:`init` then joins the process group (NCCL on
CUDA, gloo on CPU) and picks ``cuda:LOCAL_RANK``. Without those variables everything here is the one-process
identity: ``world() == 1``, :func:`is_main` is true, :func:`wrap` returns the model unchanged.

Semantics (docs/pipeline.md, "Several processes"): ``batch_size`` is the global batch, split evenly over the
processes; each step's gradient is the average over all processes (DDP), so the learning rate keeps its meaning.
:class:`ShardedRandomSampler` gives process ``r`` every ``world``-th image of the same permutation a one-process
run draws, so the images of one global step are the same whatever the number of processes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from segdet.schema import ConfigError

log = logging.getLogger(__name__)


def world() -> int:
    """Number of training processes (all nodes); 1 outside ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


_rank = rank  # for ShardedRandomSampler, whose argument has the same name


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True in the one process that logs, writes checkpoints and outputs (rank 0), and outside ``torchrun``."""
    return rank() == 0


def active() -> bool:
    return world() > 1 and dist.is_available() and dist.is_initialized()


def init(device: torch.device) -> torch.device:
    """Join the process group when started by ``torchrun`` with more than one process; returns this process's
    device (``cuda:LOCAL_RANK`` on CUDA). NCCL on CUDA, gloo on CPU. A no-op for one process."""
    if world() == 1 or active():
        return _local_device(device)
    device = _local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    log.info("process %d of %d (local %d) on %s, backend %s", rank(), world(), local_rank(), device, backend)
    return device


def _local_device(device: torch.device) -> torch.device:
    if world() > 1 and device.type == "cuda":
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return device


def close() -> None:
    """Leave the process group (end of a training stage)."""
    if active():
        dist.destroy_process_group()


def closing(main: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], None]:
    """A training stage's ``main`` that leaves the process group when it ends, however it ends (for
    ``run_stage``)."""
    def run(argv: list[str] | None = None) -> None:
        try:
            main(argv)
        finally:
            close()
    return run


def per_process(batch_size: int, key: str) -> int:
    """The per-process share of the global ``batch_size``; it must divide evenly (``key`` names the parameter)."""
    n = world()
    if batch_size % n:
        raise ConfigError(
            f"{key} = {batch_size} is the global batch (images per optimizer step over all processes); with "
            f"{n} processes it must be a multiple of {n}: use {max(n, batch_size // n * n)} or "
            f"{math.ceil(batch_size / n) * n}"
        )
    return batch_size // n


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (batch norm made SyncBatchNorm on CUDA: statistics over the global
    batch; on CPU, where PyTorch's SyncBatchNorm does not run, each process normalises over its own share).
    Returns ``model`` itself for one process."""
    if not active():
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (validation results, so the best-checkpoint choice agrees)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``values`` over the processes (a copy; ``values`` itself for one process)."""
    if not active():
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


class ShardedRandomSampler(DistributedSampler):
    """DistributedSampler whose permutation comes from the data loader's ``generator``, drawn exactly as
    ``RandomSampler`` draws it in a one-process run (the engine re-seeds that generator every epoch, which
    is what ``set_epoch`` does for DistributedSampler). Process ``r`` takes positions ``r, r + world, ...``, so
    the images of global step ``i`` are the ``i``-th ``batch_size`` of the one-process order. When the number
    of images is not a multiple of the processes, the first ones are repeated to fill (as DistributedSampler
    does)."""

    def __init__(self, dataset, generator: torch.Generator, num_replicas: int | None = None, rank: int | None = None):
        super().__init__(dataset, num_replicas=world() if num_replicas is None else num_replicas,
                         rank=_rank() if rank is None else rank, shuffle=True, drop_last=False)
        self.generator = generator

    def __iter__(self) -> Iterator[int]:
        indices = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        pad = self.total_size - len(indices)
        indices += (indices * math.ceil(max(pad, 1) / len(indices)))[:pad]
        return iter(indices[self.rank:self.total_size:self.num_replicas])
