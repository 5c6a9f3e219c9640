"""What every optimizer offers the trainer: a name, community defaults, and how to build it lazily.

Optional optimizers live in packages that are imported only when chosen (`require`), so a missing one is a
clear error naming the pip command, never an ImportError at node registration.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import torch

from ..errors import TrainingError

# (param groups [{"params": [...], "lr": float}, ...], settings) -> optimizer
Build = Callable[[list[dict[str, Any]], dict[str, Any]], torch.optim.Optimizer]


class MissingPackageError(TrainingError):
    """An optional package the chosen optimizer needs is not installed."""


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    summary: str
    build: Build
    defaults: dict[str, Any] = field(default_factory=dict)  # the community's settings; the user's override them
    schedule_free: bool = False  # needs optimizer.train()/.eval(); its averaged weights are the result
    estimates_lr: bool = False  # the learning rate multiplies the optimizer's own step-size estimate (Prodigy)
    self_scheduled: Callable[[dict[str, Any]], bool] = lambda settings: False  # drives its own LR (Adafactor relative_step)
    # optimizer state per trained value, in fp32 values (AdamW: exp_avg + exp_avg_sq = 2), for the memory plan;
    # tests/test_optimizers.py measures each against the real optimizer on LoRA-shaped tensors
    state_slots: float = 2.0


def require(module: str, pip: str, optimizer: str) -> ModuleType:
    """Import an optional package, or say which pip command brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPackageError(
            f"optimizer {optimizer!r} needs the Python package {module!r}, which is not installed "
            f"({error}). Install it into ComfyUI's Python with:  pip install {pip}") from None


def settings_for(spec: OptimizerSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """The spec's defaults with the user's settings on top; unknown names are an error naming the valid ones."""
    unknown = sorted(set(overrides) - set(spec.defaults))
    if unknown:
        raise TrainingError(f"optimizer {spec.name!r} has no setting {', '.join(map(repr, unknown))}; "
                            f"its settings are: {', '.join(sorted(spec.defaults)) or 'none'}")
    return {**spec.defaults, **overrides}
