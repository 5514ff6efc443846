"""Data-parallel training over several processes: ``torchrun --nproc-per-node N``.

``resilient-tx train`` calls :func:`setup` first. Started by ``torchrun`` (which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address), it joins the process
group (NCCL on CUDA, one GPU per process; gloo on the CPU); started any other way it is a
single process and nothing changes. Every process then runs the same training:

* the trained module is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`
  (:func:`wrap`), whose gradient all-reduce keeps the weights of all ranks identical;
* each rank draws its own crops and masks (its generators are seeded by :func:`rank_seed`
  and, after a resume, re-derived by :func:`fork`), so the global batch is ``N`` times the
  configured per-process batch; the peak learning rate is scaled by the square-root rule
  (:meth:`DistInfo.scale_lr`);
* state that is not a gradient is kept equal explicitly: the quantizer's usage counts are
  summed before a dead-code restart and rank 0's restarted codebooks are broadcast;
* ranks agree on the step count (:func:`agree`): with a time budget rank 0's estimate
  decides, so no rank waits forever in an all-reduce;
* only rank 0 writes the log, checkpoints and model files and shows progress.

:func:`cleanup` leaves the process group; :func:`session` does both around a run.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from resilient_tx.errors import InputError

#: Seed offset between ranks: far apart, so rank streams never start on the same seed.
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: rank ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and reports."""
        return self.rank == 0

    def scale_lr(self, lr: float) -> float:
        """``lr`` for the global batch: square-root rule (see training/efficiency.py)."""
        return lr * math.sqrt(self.world_size)


SINGLE = DistInfo()


def from_env(env: Mapping[str, str] | None = None) -> DistInfo:
    """The :class:`DistInfo` that ``torchrun``'s variables describe; :data:`SINGLE` if
    there are none."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise InputError(f"bad torchrun environment: {exc}") from exc
    if not 0 <= rank < max(world, 1):
        raise InputError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return DistInfo(rank, world, local) if world > 1 else SINGLE


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group if started by ``torchrun``; this rank's device.

    On CUDA each process takes GPU ``LOCAL_RANK``.
    """
    info = from_env()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    return info, device


def cleanup() -> None:
    """Leave the process group (a no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[tuple[DistInfo, torch.device]]:
    """:func:`setup` on entry (this rank's info and device), :func:`cleanup` on exit."""
    info, dev = setup(device)
    try:
        yield info, dev
    finally:
        cleanup()


def wrap(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``module`` under DistributedDataParallel when there are several ranks, else itself.

    Buffers are not broadcast at every forward: the one the models have (the quantizer's
    usage counts) is a per-rank count that :func:`sum_` merges when it is needed.
    """
    if not info.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # Newer torch renames the switch (and deprecates the old name); usage starts at zero on
    # every rank, so the one sync at construction that the new one keeps is harmless.
    renamed = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
    no_sync: dict[str, Any] = ({"forward_sync_buffers": False} if renamed
                               else {"broadcast_buffers": False})
    # The depthwise convs' weight gradients come with other strides than the bucket over
    # their size-1 dimension (the same memory layout); torch warns about it on every rank.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Gradients as views of the all-reduce buckets: no copy in or out of them per step.
    return ddp(module, device_ids=ids, gradient_as_bucket_view=True, **no_sync)


def _comm_device(tensor_device: torch.device) -> torch.device:
    """Where a tensor must live for the current backend (NCCL: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor_device


def agree(info: DistInfo, value: int) -> int:
    """Rank 0's ``value`` on every rank (a collective: every rank must call it)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device(torch.device("cpu")))
    dist.broadcast(t, src=0)
    return int(t.item())


def sum_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (a collective)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank, in place (a collective)."""
    if info.enabled:
        dist.broadcast(tensor, src=0)
    return tensor


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if info.enabled:
        dist.barrier()


def rank_seed(seed: int, info: DistInfo) -> int:
    """The seed of this rank's data and mask generators (``seed`` itself on rank 0)."""
    return seed + RANK_SEED_STRIDE * info.rank


def fork(gen: torch.Generator, info: DistInfo) -> None:
    """Give a generator restored from rank 0's checkpoint a stream of this rank's own.

    A checkpoint holds rank 0's generators only; every other rank re-seeds from a draw of
    the restored state plus its rank, so a resumed run is reproducible and the ranks still
    draw different crops.
    """
    if info.rank:
        draw = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
        gen.manual_seed(draw + info.rank)
