"""Optimizers by name. Each lives in its own file on base.OptimizerSpec; optional packages load lazily."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..errors import TrainingError
from . import adafactor, adamw, adamw8bit, came, lion, prodigy, schedule_free
from .base import MissingPackageError, OptimizerSpec, settings_for

OPTIMIZERS: dict[str, OptimizerSpec] = {s.name: s for s in (
    adamw.SPEC, adamw8bit.SPEC, adafactor.SPEC, came.SPEC, prodigy.SPEC, lion.SPEC, schedule_free.SPEC)}

__all__ = ["OPTIMIZERS", "MissingPackageError", "OptimizerSpec", "check_learning_rate", "evaluation_weights",
           "make_optimizer", "optimizer_spec", "settings_for"]


def optimizer_spec(name: str) -> OptimizerSpec:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise TrainingError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}") from None


def check_learning_rate(spec: OptimizerSpec, lr: float, group: str | None = None) -> None:
    """lr > 0, and near 1 for an optimizer that multiplies its own step-size estimate by it (Prodigy)."""
    if not lr > 0:
        raise TrainingError(f"learning rate of {group or 'a parameter group'} must be > 0, got {lr}")
    if spec.estimates_lr and lr < 0.01:
        raise TrainingError(
            f"{spec.name} estimates its own step size and multiplies it by the learning rate; "
            f"{group or 'the'} learning rate {lr} would all but stop training (use 1.0)")


def make_optimizer(name: str, groups: list[dict[str, Any]], settings: dict[str, Any] | None = None) -> torch.optim.Optimizer:
    """Build optimizer `name` over param groups [{"params": [...], "lr": float, "name": str}, ...]."""
    spec = optimizer_spec(name)
    merged = settings_for(spec, dict(settings or {}))
    for group in groups:
        check_learning_rate(spec, group["lr"], group.get("name"))
    return spec.build([{k: v for k, v in g.items() if k != "name"} for g in groups], merged)


@contextlib.contextmanager
def evaluation_weights(name: str, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Parameters hold the weights to evaluate/save inside (schedule-free: its average); training resumes exactly."""
    if optimizer_spec(name).schedule_free:
        with schedule_free.averaged_weights(optimizer, params):
            yield
    else:
        yield
