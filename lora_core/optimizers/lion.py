"""Lion (sign updates; use a learning rate 3-10x below AdamW's) from pytorch_optimizer."""

from __future__ import annotations

import torch

from .base import OptimizerSpec, require


def _build(groups, settings) -> torch.optim.Optimizer:
    po = require("pytorch_optimizer", "pytorch-optimizer", "lion")
    return po.Lion(groups, betas=tuple(settings["betas"]), weight_decay=settings["weight_decay"], foreach=False)


SPEC = OptimizerSpec(
    name="lion", summary="Lion (pytorch_optimizer)", build=_build,
    defaults={"betas": (0.9, 0.99), "weight_decay": 0.01},
    state_slots=1.0,  # one momentum
)
