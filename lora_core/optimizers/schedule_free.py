"""Schedule-free AdamW: no LR schedule (its own warm-up only); the weights to evaluate and save are its
averaged sequence x, the ones it steps are y. The reference `schedulefree` is used when installed, else
pytorch_optimizer's port.

Both switch in place (optimizer.eval(): y -> x, .train(): x -> y), and the round trip is not exact in
floating point, so `averaged_weights` snapshots y and puts it back bit for bit: evaluating, previewing or
saving mid-run never changes what training continues from.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Iterator

import torch

from .base import OptimizerSpec, require


def _build(groups, settings) -> torch.optim.Optimizer:
    kwargs = dict(betas=tuple(settings["betas"]), eps=settings["eps"], weight_decay=settings["weight_decay"],
                  warmup_steps=int(settings["warmup_steps"]), r=settings["r"], weight_lr_power=settings["weight_lr_power"])
    if importlib.util.find_spec("schedulefree") is not None:
        optimizer = require("schedulefree", "schedulefree", "adamw_schedulefree").AdamWScheduleFree(groups, foreach=False, **kwargs)
    else:
        po = require("pytorch_optimizer", "schedulefree", "adamw_schedulefree")
        optimizer = po.ScheduleFreeAdamW(groups, foreach=False, **kwargs)
    optimizer.train()
    return optimizer


def _set_train_flag(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:  # the flag both implementations keep, without their in-place switch
        group["train_mode"] = True


@contextlib.contextmanager
def averaged_weights(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Parameters hold the averaged weights x inside; the exact training weights y again after."""
    saved = [p.detach().clone() for p in params]
    optimizer.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, y in zip(params, saved):
                p.copy_(y)
        _set_train_flag(optimizer)


SPEC = OptimizerSpec(
    name="adamw_schedulefree", summary="Schedule-free AdamW (schedulefree, else pytorch_optimizer)", build=_build,
    defaults={"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "warmup_steps": 0, "r": 0.0,
              "weight_lr_power": 2.0},
    schedule_free=True,
    state_slots=2.0,  # z and exp_avg_sq
)
