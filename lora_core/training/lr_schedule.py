"""The learning-rate schedule (diffusers' get_scheduler), warm-up included."""

from __future__ import annotations

import torch

from ..errors import TrainingError

LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")


def check_schedule(name: str, warmup_steps: int) -> None:
    if name not in LR_SCHEDULES:
        raise TrainingError(f"unknown lr_schedule {name!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if warmup_steps < 0:
        raise TrainingError(f"warmup_steps must be >= 0, got {warmup_steps}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int, cycles: int = 1,
) -> torch.optim.lr_scheduler.LRScheduler:
    """One of LR_SCHEDULES; "constant" with warm-up steps is constant_with_warmup."""
    check_schedule(name, warmup_steps)
    from diffusers.optimization import get_scheduler

    if name == "constant" and warmup_steps:
        name = "constant_with_warmup"
    kwargs = {} if name == "constant" else {"num_warmup_steps": warmup_steps}
    if name in ("cosine", "cosine_with_restarts", "linear", "polynomial"):
        kwargs["num_training_steps"] = total_steps
    if name == "cosine_with_restarts":
        kwargs["num_cycles"] = max(1, int(cycles))
    return get_scheduler(name, optimizer, **kwargs)


def self_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Adafactor with relative_step sets its own step size: its AdafactorSchedule only reports it."""
    from transformers.optimization import AdafactorSchedule

    return AdafactorSchedule(optimizer)
