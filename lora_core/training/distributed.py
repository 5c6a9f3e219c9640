"""Data-parallel training over torch.distributed: what the trainer needs from a multi-process launch.

Launched by torchrun or `accelerate launch` (both set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR). Every rank
draws the same global step (sample order, noise, noise levels: one generator seeded by the run's seed) and
computes only its contiguous slice of each micro-batch; the LoRA gradients (and nothing of the frozen base,
which each rank holds whole and never wraps) are averaged with one all-reduce per optimizer step before
clipping, so every rank takes the same optimizer step. The result equals a one-process run at the same global
batch up to float summation order, and a run saved at one world size resumes at another. Dropout draws from
torch's global RNG, seeded per (seed, rank, step): reproducible whatever order the processes start in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from ..errors import TrainingError


def launched_world_size() -> int:
    """The world size the launcher set (1 when not launched by torchrun / accelerate)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise TrainingError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def wants_cpu() -> bool:
    """accelerate's --cpu (ACCELERATE_USE_CPU=1), or no CUDA at all."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()


@dataclass
class Distributed:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: list[int], noise: list[torch.Tensor], u: torch.Tensor, conds: list[Any]):
        """This rank's contiguous slice of one micro-batch (the global batch divides by the world size)."""
        n = len(batch)
        if n % self.world_size:
            raise TrainingError(f"batch_size {n} does not divide by the {self.world_size} processes")
        lo, hi = self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size
        return batch[lo:hi], noise[lo:hi], u[lo:hi], conds[lo:hi]

    def seed_step(self, seed: int, step: int) -> None:
        """Dropout's RNG for this rank and step (same on a rerun, independent of launch order and resume)."""
        torch.manual_seed((seed * 1_000_003 + step) * 4099 + self.rank)

    def mean(self, value: float) -> float:
        """The mean over ranks of a per-rank scalar (each rank's micro-batch loss is its slice's mean)."""
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return float(t) / self.world_size

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Average the LoRA gradients over ranks in one flat all-reduce (a missing grad counts as zero)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads]).to(self._comm_device())
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(device=p.device, dtype=g.dtype)
            offset += n

    def barrier(self) -> None:
        torch.distributed.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def init_from_env(timeout_s: float = 1800) -> Distributed | None:
    """Join the process group the launcher described; None for a plain one-process run."""
    world = launched_world_size()
    if world <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cpu = wants_cpu()
    device = torch.device("cpu") if cpu else torch.device("cuda", local_rank)
    if not cpu:
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo" if cpu else "nccl", timeout=timedelta(seconds=timeout_s))
    return Distributed(rank=rank, world_size=world, device=device)


def shutdown(dist: Distributed | None) -> None:
    if dist is not None and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
