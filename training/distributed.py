"""torchrun support: one process per device, DDP over nccl (GPU) or gloo (CPU), rank 0 does the I/O."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_type: str) -> Dist:
    """Join the process group torchrun set up the environment for; a single process otherwise."""
    if not launched_by_torchrun():
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size())


def broadcast(obj, d: Dist):
    """Rank 0's value of a picklable object, on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, d: Dist) -> list:
    """Every rank's value of a picklable object, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean over ranks of a float tensor (itself on a single process)."""
    if not d.enabled:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / d.world_size


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
