"""AdamW over the LoRA parameters and the learning-rate schedule (diffusers' get_scheduler)."""

from __future__ import annotations

from typing import Iterable

import torch

from .errors import TrainingError

LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear")


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    if not lr > 0:
        raise TrainingError(f"learning_rate must be > 0, got {lr}")
    # foreach=False: same arithmetic on every device/param count -> byte-reproducible on CPU
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, foreach=False)


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """"constant" | "constant_with_warmup" | "cosine" (with warmup) | "linear" (with warmup)."""
    if name not in LR_SCHEDULES:
        raise TrainingError(f"unknown lr_schedule {name!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if warmup_steps < 0:
        raise TrainingError(f"warmup_steps must be >= 0, got {warmup_steps}")
    from diffusers.optimization import get_scheduler

    if name == "constant" and warmup_steps:
        name = "constant_with_warmup"
    kwargs = {} if name == "constant" else {"num_warmup_steps": warmup_steps}
    if name in ("cosine", "linear"):
        kwargs["num_training_steps"] = total_steps
    return get_scheduler(name, optimizer, **kwargs)
