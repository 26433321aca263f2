"""Data-parallel training across processes started by `torchrun` (or `accelerate launch`).

Each process holds the whole frozen base and its own copy of P; PyTorch's DistributedDataParallel
wraps P alone, so only P's gradients are all-reduced (averaged) after each backward pass. Every
communication is a torch.distributed collective; rank 0 writes the checkpoint, the metrics and the
logs. A single process (no WORLD_SIZE in the environment, or 1) runs exactly the plain path.

How the data is split is in `Trainer._step_indices`: DistributedSampler's rule, so K processes with
`--batch-size B` see, step for step, the pairs one process with `--batch-size K*B` sees.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clm_local.errors import ClmError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device: torch.device) -> torch.device:
        """This process's device: its own GPU (LOCAL_RANK) when the run uses CUDA."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over all processes (in place; returned for chaining)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` holds in every process (a decision all of them must take together)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def wrap(self, pre_layer: nn.Module, device: torch.device) -> nn.Module:
        """P as the module the training forward calls: DDP-wrapped when there are several processes."""
        if not self.distributed:
            return pre_layer
        return DistributedDataParallel(pre_layer, device_ids=[device] if device.type == "cuda" else None)

    def no_sync(self, module: nn.Module, accumulating: bool) -> AbstractContextManager:
        """Skip the gradient all-reduce for a micro-batch that is not the step's last one."""
        if accumulating and isinstance(module, DistributedDataParallel):
            return module.no_sync()
        return nullcontext()


SINGLE = World()


def _environment_world() -> World:
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise ClmError(f"WORLD_SIZE / RANK / LOCAL_RANK are not integers ({error})") from None
    return World(rank, size, local_rank)


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the process group `torchrun` describes in the environment (NCCL on CUDA, gloo otherwise)
    for the duration of a run; outside torchrun this is the single process."""
    world = _environment_world()
    if not world.distributed or dist.is_initialized():
        yield world
        return
    if device.type == "cuda":
        torch.cuda.set_device(world.device(device))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    logger = logging.getLogger("clm_local")
    level = logger.level
    if not world.is_main:
        logger.setLevel(logging.WARNING)
    try:
        yield world
    finally:
        logger.setLevel(level)
        dist.destroy_process_group()
