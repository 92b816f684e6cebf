"""Data parallelism under ``torchrun``: the process group, each process's device, and the
numbers all processes must agree on.

Off unless launched by ``torchrun`` (WORLD_SIZE > 1): gloo on a CPU, NCCL on GPUs, each
process then on the GPU of its LOCAL_RANK.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from nngraph.device import resolve_device


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def process_device(name: str, world: int) -> torch.device:
    """This process's device: ``name`` resolved; under torchrun on GPUs, the GPU of LOCAL_RANK."""
    device = resolve_device(name)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def init_distributed(device: str = "auto") -> bool:
    """Join the process group when launched by torchrun; returns whether this call created it.

    NCCL when the run's device is a GPU (each process on the GPU of its LOCAL_RANK), else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = process_device(device, int(os.environ["WORLD_SIZE"])).type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def slowest(seconds: float, device: torch.device) -> float:
    """The largest of every process's ``seconds`` (one step's time, so that all processes of
    a time-budget run stop after the same step)."""
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def summed(total: float, count: int, device: torch.device) -> tuple[float, int]:
    """(sum of every process's ``total``, sum of their ``count``)."""
    sums = torch.tensor([total, count], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return float(sums[0]), int(sums[1])
