"""CAME (confidence-guided Adafactor-like, low memory) from pytorch_optimizer; Sana's defaults
(betas 0.9/0.999/0.9999, eps 1e-30/1e-16, no weight decay)."""

from __future__ import annotations

import torch

from .base import OptimizerSpec, require


def _build(groups, settings) -> torch.optim.Optimizer:
    po = require("pytorch_optimizer", "pytorch-optimizer", "came")
    return po.CAME(groups, betas=tuple(settings["betas"]), weight_decay=settings["weight_decay"],
                   eps1=settings["eps1"], eps2=settings["eps2"], clip_threshold=settings["clip_threshold"])


SPEC = OptimizerSpec(
    name="came", summary="CAME (pytorch_optimizer)", build=_build,
    defaults={"betas": (0.9, 0.999, 0.9999), "weight_decay": 0.0, "eps1": 1e-30, "eps2": 1e-16, "clip_threshold": 1.0},
    state_slots=1.5,  # first moment and factored second moment / residual
)
