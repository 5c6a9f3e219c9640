"""AdamW (torch): the default; betas, eps and weight decay as kohya / diffusers' LoRA scripts use them."""

from __future__ import annotations

import torch

from .base import OptimizerSpec


def _build(groups, settings) -> torch.optim.Optimizer:
    # foreach=False: the same arithmetic for any parameter count -> byte-reproducible on the CPU
    return torch.optim.AdamW(groups, betas=tuple(settings["betas"]), eps=settings["eps"],
                             weight_decay=settings["weight_decay"], foreach=False)


SPEC = OptimizerSpec(
    name="adamw", summary="AdamW (torch)", build=_build,
    defaults={"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01},
)
