"""Process-group set-up for torchrun: NCCL on GPU, gloo on CPU; one process works without it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar, cast

import torch
import torch.distributed as dist

from pipeline.errors import ParamsError

_T = TypeVar("_T")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def pick_device(preference: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """auto|cpu|cuda -> a device; ``key`` names the params.yaml setting in the error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"{key} is 'cuda' but no CUDA device is visible; set {key}: auto or cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto", timeout_s: int = 1800) -> DistContext:
    """Reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); plain ``python`` is world 1.

    NCCL gets the process's GPU (``device_id``: the communicator is made at once, on the right GPU);
    ``timeout_s`` bounds every collective (``train.dist_timeout_s``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size == 1:
        return DistContext(0, 1, 0, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if backend == "nccl" else None,
        )
    return DistContext(rank, world_size, local_rank, device, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(ctx: DistContext, obj: _T) -> _T:
    """Rank 0's object (e.g. the resume checkpoint it loaded), sent to every rank."""
    if not ctx.distributed:
        return obj
    holder: list[_T | None] = [obj if ctx.is_main else None]
    dist.broadcast_object_list(holder, src=0, device=ctx.device if ctx.backend == "nccl" else None)
    return cast(_T, holder[0])  # tensors arrive where rank 0 had them (the CPU); their users place them
