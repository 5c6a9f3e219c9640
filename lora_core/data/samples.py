"""A training sample (latent + its opaque cond) as the trainer consumes it, and copying inference tensors so
autograd may save them (ComfyUI runs nodes under inference_mode)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
@dataclass
class TrainSample:
    latent: torch.Tensor  # (C, H, W) or (C, T, H, W), already in the model's latent space (process_latent_in-ed)
    cond: Any  # opaque, handed to backend.denoise paired with this latent; see draw_cond
    caption: str = ""


def draw_cond(cond: Any, generator: torch.Generator) -> Any:
    """A cond that varies per step (caption dropout, tag shuffling) has draw(generator) -> the cond to use;
    it is called with the run's generator when the step's randomness is drawn, so runs stay reproducible."""
    draw = getattr(cond, "draw", None)
    return draw(generator) if callable(draw) else cond


def usable_in_autograd(obj: Any) -> Any:
    """Copy inference-mode tensors (anywhere in dicts/lists/tuples) so autograd may save them."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.is_inference() else obj
    if isinstance(obj, dict):
        return {k: usable_in_autograd(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(usable_in_autograd(v) for v in obj)
    return obj
