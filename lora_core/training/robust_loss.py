"""Element-wise losses on the native residual r = raw - raw* and kohya's Huber threshold schedules.

  l2          r^2
  l1          |r|
  huber       2 c (sqrt(r^2 + c^2) - c)      (pseudo-Huber: ~r^2 near 0, ~2c|r| far out)
  smooth_l1   2 (sqrt(r^2 + c^2) - c)        (~r^2/c near 0, ~2|r| far out)

The threshold c per sample follows kohya's schedules, in terms of the model's sigma:
  constant     c = huber_c * huber_scale
  exponential  c = huber_scale * huber_c ** t        (t: the model's timestep fraction; huber_scale at t = 0)
  snr          c = (1 - huber_c) / (1 + sigma_ve)^2 + huber_c,  sigma_ve = 1 / sqrt(SNR)
"""

from __future__ import annotations

import torch

from .loss_options import LossOptions


def huber_threshold(options: LossOptions, t: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
    if options.huber_schedule == "constant":
        return torch.full_like(t, options.huber_c * options.huber_scale)
    if options.huber_schedule == "exponential":
        return options.huber_scale * torch.exp(torch.log(torch.tensor(options.huber_c)) * t)
    sigma_ve = snr.rsqrt()
    return (1 - options.huber_c) / (1 + sigma_ve) ** 2 + options.huber_c


def elementwise(residual: torch.Tensor, options: LossOptions, c: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of each element of residual (B, ...); c: per-sample threshold (B,) for huber / smooth_l1."""
    if options.loss_type == "l2":
        return residual.pow(2)
    if options.loss_type == "l1":
        return residual.abs()
    c = c.reshape(-1, *[1] * (residual.dim() - 1)).to(residual)
    root = torch.sqrt(residual.pow(2) + c.pow(2)) - c
    return 2 * c * root if options.loss_type == "huber" else 2 * root
