"""Per-sample loss weights, each written once in terms of the model's sigma, so they hold for every family.

The backend's forward process is x_t = a(sigma) x0 + b(sigma) noise (read off backend.noisy), so
SNR(sigma) = (a / b)^2, and its native loss relates to the x0 error by L_native = L_x0 / c_out(sigma)^2
(objective.py). Weights are factors on L_native:

  min-SNR gamma   L = min(SNR, gamma) L_x0          ->  w = min(SNR, gamma) c_out^2
                  (eps: min(SNR, gamma) / SNR; v: min(SNR, gamma) / (SNR + 1), as diffusers and kohya)
  debiased        L = L_eps / sqrt(SNR), L_eps = SNR L_x0   ->  w = SNR c_out^2 / sqrt(SNR)
                  (eps: 1 / sqrt(SNR), kohya's; the sqrt's SNR capped at 1000 as kohya does for t = 0.
                  For v models kohya uses 1 / (SNR + 1) instead; this keeps the paper's definition.)
"""

from __future__ import annotations

from typing import Any

import torch

from .loss_options import LossOptions

DEBIASED_SNR_CAP = 1000.0


def snr(backend: Any, sigma: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio (a/b)^2 of the backend's forward process at sigma, shape (B,)."""
    ones = torch.ones(sigma.shape[0], 1, device=sigma.device, dtype=torch.float32)
    zeros = torch.zeros_like(ones)
    a = backend.noisy(ones, zeros, sigma.float()).reshape(-1)
    b = backend.noisy(zeros, ones, sigma.float()).reshape(-1)
    return (a / b).pow(2)


def loss_weight(backend: Any, sigma: torch.Tensor, c_out: torch.Tensor, options: LossOptions) -> torch.Tensor | None:
    """Product of the enabled weights (B,), or None when none is on."""
    if not options.min_snr_gamma and not options.debiased_estimation:
        return None
    s = snr(backend, sigma)
    c2 = c_out.float().reshape(-1).pow(2)
    weight = torch.ones_like(s)
    if options.min_snr_gamma:
        weight = weight * s.clamp(max=options.min_snr_gamma) * c2
    if options.debiased_estimation:
        weight = weight * s * c2 / s.clamp(max=DEBIASED_SNR_CAP).sqrt()
    return weight
