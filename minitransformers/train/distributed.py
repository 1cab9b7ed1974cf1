"""Data parallelism: one process per device, gradients averaged by all-reduce (DistributedDataParallel).

`torchrun --nproc_per_node=N -m minitransformers finetune …` starts N processes and sets RANK, WORLD_SIZE and
LOCAL_RANK; `init()` reads them and joins the group, with NCCL on GPUs and gloo on CPUs. A single process
(plain `python -m …`) gets a world of one and no process group, so the same code runs either way.

`wrap(model)` is the one place that decides how the model is replicated. DDP keeps a full copy per device;
with `fsdp=True` (`--fsdp`) the model is sharded instead (fsdp.py: `fully_shard`, parameters, gradients and
optimizer state split over the processes), and the trainer gathers a full state dict to save the best model
(fsdp.full_model) and writes sharded checkpoints (sharded_checkpoint.py). `init(device, fsdp=True)` joins a
process group even in a world of one, since fully_shard needs a device mesh: a sharded run can then be resumed by
a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .fsdp import shard


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str, fsdp: bool = False) -> World:
    """Join the process group that torchrun describes in the environment, or return a world of one (with a
    process group of one, in memory, when `fsdp`)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 and not fsdp:
        return World(device=torch.device(device))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if on_gpu else "gloo"
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend=backend)
        else:  # a plain `python -m …` with --fsdp: a group of one needs no rendezvous
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return World(rank, size, torch.device("cuda", local_rank) if on_gpu else torch.device("cpu"))


def wrap(model: nn.Module, world: World, fsdp: bool = False, precision: str = "fp32", offload: bool = False) -> nn.Module:
    if fsdp:
        return shard(model, world.device, world.size, precision, offload)
    if world.size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def shutdown(world: World) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
