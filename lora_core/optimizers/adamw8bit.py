"""AdamW with 8-bit (block-wise quantised) moments from bitsandbytes; since 0.50 it also runs on the CPU.

Tensors under bitsandbytes' min_8bit_size (4096 values) keep 32-bit moments, as in kohya and diffusers.
"""

from __future__ import annotations

import torch

from .base import OptimizerSpec, require


def _build(groups, settings) -> torch.optim.Optimizer:
    bnb = require("bitsandbytes", '"bitsandbytes>=0.50"', "adamw8bit")
    return bnb.optim.AdamW8bit(groups, betas=tuple(settings["betas"]), eps=settings["eps"],
                               weight_decay=settings["weight_decay"], min_8bit_size=int(settings["min_8bit_size"]))


SPEC = OptimizerSpec(
    name="adamw8bit", summary="AdamW with 8-bit state (bitsandbytes)", build=_build,
    defaults={"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "min_8bit_size": 4096},
    state_slots=0.55,  # two 8-bit moments and their block scales
)
