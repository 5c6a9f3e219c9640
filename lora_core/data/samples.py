"""A training sample (latent + its opaque cond + an optional loss mask) as the trainer consumes it, and copying
inference tensors so autograd may save them (ComfyUI runs nodes under inference_mode)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TrainSample:
    latent: torch.Tensor  # (C, H, W) or (C, T, H, W), already in the model's latent space (process_latent_in-ed)
    cond: Any  # opaque, handed to backend.denoise paired with this latent; see draw_cond
    caption: str = ""
    mask: torch.Tensor | None = None  # loss weight per latent cell (H, W) (data/masks.py); None: 1 everywhere


def batch_masks(samples: list[TrainSample]) -> torch.Tensor | None:
    """(B, H, W) loss weights of a batch (ones for a sample without a mask), or None when no sample has one."""
    if all(s.mask is None for s in samples):
        return None
    return torch.stack([s.mask if s.mask is not None else torch.ones(s.latent.shape[-2:]) for s in samples])


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
