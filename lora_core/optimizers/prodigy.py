"""Prodigy: estimates its own step size D; the learning rate multiplies D (1.0 is the recommended value).

The reference `prodigyopt` is used when installed, else pytorch_optimizer's port. Defaults are the
LoRA community's: weight decay 0.01 (decoupled), bias correction and safeguarded warm-up on, d_coef 1.
"""

from __future__ import annotations

import importlib.util

import torch

from .base import OptimizerSpec, require


def _build(groups, settings) -> torch.optim.Optimizer:
    kwargs = dict(betas=tuple(settings["betas"]), weight_decay=settings["weight_decay"],
                  use_bias_correction=settings["use_bias_correction"], safeguard_warmup=settings["safeguard_warmup"],
                  d0=settings["d0"], d_coef=settings["d_coef"])
    if importlib.util.find_spec("prodigyopt") is not None:
        return require("prodigyopt", "prodigyopt", "prodigy").Prodigy(groups, decouple=True, **kwargs)
    po = require("pytorch_optimizer", "prodigyopt", "prodigy")
    return po.Prodigy(groups, weight_decouple=True, bias_correction=kwargs.pop("use_bias_correction"), **kwargs)


SPEC = OptimizerSpec(
    name="prodigy", summary="Prodigy (prodigyopt, else pytorch_optimizer)", build=_build,
    defaults={"betas": (0.9, 0.999), "weight_decay": 0.01, "use_bias_correction": True, "safeguard_warmup": True,
              "d0": 1e-6, "d_coef": 1.0},
    estimates_lr=True,
    state_slots=4.0,  # exp_avg, exp_avg_sq, s and the initial weights p0
)
