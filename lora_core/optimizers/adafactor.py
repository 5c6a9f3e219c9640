"""Adafactor (transformers' implementation, the one kohya uses), with kohya's LoRA settings:
relative_step, scale_parameter and warmup_init off, so the learning rate and schedule are the user's.
With relative_step on, Adafactor sets its own step size and the LR schedule is its own (AdafactorSchedule)."""

from __future__ import annotations

import torch

from .base import OptimizerSpec, require


def _build(groups, settings) -> torch.optim.Optimizer:
    optimization = require("transformers.optimization", "transformers", "adafactor")
    if settings["relative_step"]:
        groups = [{**g, "lr": None} for g in groups]  # Adafactor refuses an explicit lr with relative_step
    return optimization.Adafactor(
        groups, lr=None, eps=tuple(settings["eps"]), clip_threshold=settings["clip_threshold"],
        decay_rate=settings["decay_rate"], beta1=settings["beta1"], weight_decay=settings["weight_decay"],
        scale_parameter=settings["scale_parameter"], relative_step=settings["relative_step"],
        warmup_init=settings["warmup_init"])


SPEC = OptimizerSpec(
    name="adafactor", summary="Adafactor (transformers)", build=_build,
    defaults={"eps": (1e-30, 1e-3), "clip_threshold": 1.0, "decay_rate": -0.8, "beta1": None, "weight_decay": 0.0,
              "scale_parameter": False, "relative_step": False, "warmup_init": False},
    self_scheduled=lambda settings: bool(settings["relative_step"]),
    state_slots=0.25,  # factored second moment: a row and a column per matrix
)
