"""Sampling the noise level u in (0, 1): 0 = clean, 1 = pure noise. The backend maps u to its sigma
(its own schedule and shift included), so each method here is a distribution over u alone:

  uniform        u ~ U(0, 1)
  logit_normal   u = sigmoid(mean + std z)                    (SD3 / Flux / Wan practice)
  sigmoid        u = sigmoid(scale z)                          (kohya's flux "sigmoid")
  shift          u = s v / (1 + (s - 1) v), v = sigmoid(scale z)   (kohya's "shift", on top of the model's own)
  mode           u = 1 - v - m (cos^2(pi v / 2) - 1 + v), v ~ U(0, 1)   (SD3 paper's mode sampling)

A range [lo, hi] of the model's timestep (fraction of its schedule; sigma for flow models, as Wan 2.2's
high/low-noise experts split it) rescales u into the u-interval that maps onto it, keeping the shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import TrainingError

U_MIN = 1e-3  # keep sigma > 0: the objective divides by c_out(sigma)^2 (1/1000 = one discrete timestep)
METHODS = ("uniform", "logit_normal", "sigmoid", "shift", "mode")


@dataclass(frozen=True)
class TimestepOptions:
    method: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigmoid_scale: float = 1.0
    shift: float = 3.0  # "shift" method only
    mode_scale: float = 1.29  # SD3's default
    range_min: float = 0.0  # of the model's timestep, 0..1
    range_max: float = 1.0

    def check(self) -> None:
        check_method(self.method)
        check_range(self.range_min, self.range_max)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise TrainingError(f"unknown timestep_sampling {method!r}: use one of {', '.join(METHODS)}")


def check_range(lo: float, hi: float) -> None:
    if not 0.0 <= lo < hi <= 1.0:
        raise TrainingError(f"timestep range must satisfy 0 <= min < max <= 1, got min={lo} max={hi}")


def sample_u(n: int, method: str, generator: torch.Generator, mean: float = 0.0, std: float = 1.0,
             options: TimestepOptions | None = None) -> torch.Tensor:
    """n draws of u on CPU from `generator` (mean/std: logit-normal's, kept for callers that pass them alone)."""
    o = options or TimestepOptions(method=method, logit_mean=mean, logit_std=std)
    if o.method == "uniform":
        u = torch.rand(n, generator=generator)
    elif o.method == "logit_normal":
        u = torch.sigmoid(o.logit_mean + o.logit_std * torch.randn(n, generator=generator))
    elif o.method == "sigmoid":
        u = torch.sigmoid(o.sigmoid_scale * torch.randn(n, generator=generator))
    elif o.method == "shift":
        v = torch.sigmoid(o.sigmoid_scale * torch.randn(n, generator=generator))
        u = o.shift * v / (1 + (o.shift - 1) * v)
    else:
        check_method(o.method)
        v = torch.rand(n, generator=generator)  # "mode"
        u = 1 - v - o.mode_scale * (torch.cos(math.pi * v / 2) ** 2 - 1 + v)
    return u.clamp(U_MIN, 1.0)


def timestep_fraction(backend: Any, sigma: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The model's timestep as a fraction of its schedule (backend.timestep_fraction), else u itself."""
    fraction = getattr(backend, "timestep_fraction", None)
    return fraction(sigma).float().cpu() if callable(fraction) else u.float().cpu()


def u_interval(backend: Any, lo: float, hi: float) -> tuple[float, float]:
    """The u-interval whose timesteps lie in [lo, hi] (bisection on the backend's monotone u -> timestep)."""
    check_range(lo, hi)
    if lo == 0.0 and hi == 1.0:
        return 0.0, 1.0

    def t_of(u: float) -> float:
        uu = torch.tensor([u], dtype=torch.float32)
        return float(timestep_fraction(backend, backend.sigma_from_u(uu), uu)[0])

    def inverse(target: float) -> float:
        a, b = 0.0, 1.0
        for _ in range(40):
            mid = (a + b) / 2
            a, b = (mid, b) if t_of(mid) < target else (a, mid)
        return (a + b) / 2

    return (0.0 if lo == 0.0 else inverse(lo)), (1.0 if hi == 1.0 else inverse(hi))


def into_interval(u: torch.Tensor, interval: tuple[float, float]) -> torch.Tensor:
    lo, hi = interval
    return u if (lo, hi) == (0.0, 1.0) else (lo + (hi - lo) * u).clamp(max(lo, U_MIN), hi)


def sampler(backend: Any, options: TimestepOptions) -> Callable[[int, torch.Generator], torch.Tensor]:
    """(n, generator) -> u, with the range applied; the range's u-interval is found once."""
    interval = u_interval(backend, options.range_min, options.range_max)
    return lambda n, generator: into_interval(sample_u(n, options.method, generator, options=options), interval)
