"""Sampling the noise level u in (0, 1): 0 = clean, 1 = pure noise. The backend maps u to its sigma."""

from __future__ import annotations

import torch

from .errors import TrainingError

U_MIN = 1e-3  # keep sigma > 0: the objective divides by c_out(sigma)^2 (1/1000 = one discrete timestep)


def sample_u(
    n: int, method: str, generator: torch.Generator, mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """n draws of u on CPU from `generator`: "uniform", or "logit_normal" u = sigmoid(mean + std * z)."""
    if method == "uniform":
        u = torch.rand(n, generator=generator)
    elif method == "logit_normal":
        u = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    else:
        raise TrainingError(f"unknown timestep_sampling {method!r}: use 'uniform' or 'logit_normal'")
    return u.clamp(U_MIN, 1.0)
