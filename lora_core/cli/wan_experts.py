"""Wan 2.2 A14B folders for `lora-lab train`: their pipeline has two transformers, `transformer/` for the high-noise
timesteps (t >= boundary_ratio x 1000) and `transformer_2/` for the rest, as model_index.json says. lora-lab train
trains one of them per run; which timesteps it sees must then be the user's choice, never all of them by default
(the expert would learn noise levels the pipeline never gives it)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LoraLabError


def expert_boundary(root: Path) -> float | None:
    """The pipeline's boundary_ratio when it has a second transformer (Wan 2.2 A14B), else None."""
    try:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    second = index.get("transformer_2")
    if not (isinstance(second, list) and any(second)) or index.get("boundary_ratio") is None:
        return None
    return float(index["boundary_ratio"])


def check_expert_range(root: Path, denoiser: Path, timestep_min: float, timestep_max: float) -> None:
    """Refuse a two-expert folder trained over every timestep; any range the user sets is theirs."""
    boundary = expert_boundary(root)
    if boundary is None or (timestep_min, timestep_max) != (0.0, 1.0):
        return
    low = denoiser.name == "transformer_2"
    raise LoraLabError(
        f"{root} is a two-expert Wan 2.2 pipeline: {denoiser.name}/ denoises only the "
        f"{'low' if low else 'high'}-noise timesteps ({'below' if low else 'from'} boundary_ratio {boundary}); set "
        f"train.timestep_{'max' if low else 'min'} = {boundary} to train it on those, "
        + (f"or model.path = {root / 'transformer'} with train.timestep_min = {boundary} for the high-noise one"
           if low else f"or model.path = {root / 'transformer_2'} with train.timestep_max = {boundary} for the "
                       "low-noise one")
        + " (the Train LoRA node trains both in one run: model_low_noise)")
