"""The training objective, written once for every model through the denoiser D(x_t).

D is affine in the raw network output: D = a(sigma) x_t + c_out(sigma) raw. So for the native target
raw* (eps, v or flow velocity), (D - x0) = c_out (raw - raw*) and

    ||raw - raw*||^2 = ||D - x0||^2 / c_out(sigma)^2

which is the model's native loss exactly, with no model-specific code here. Robust losses act on the same
native residual (D - x0) / c_out, and loss weights (min-SNR, debiased) are factors written in sigma.
"""

from __future__ import annotations

from typing import Any

import torch

from .backend import Backend
from .loss_options import LossOptions
from .loss_weighting import loss_weight, snr
from .robust_loss import elementwise, huber_threshold
from .timesteps import timestep_fraction

_NATIVE = LossOptions()


def per_sample_loss(denoised: torch.Tensor, x0: torch.Tensor, c_out: torch.Tensor) -> torch.Tensor:
    """mean over non-batch dims of (D - x0)^2, divided by c_out^2; computed in fp32. Shape (B,)."""
    err = (denoised.float() - x0.float()).pow(2).flatten(1).mean(dim=1)
    return err / c_out.float().reshape(-1).pow(2)


def diffusion_loss(
    backend: Backend, x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor, conds: list[Any],
    options: LossOptions = _NATIVE,
) -> torch.Tensor:
    """Per-sample loss of `backend` at noise levels u (B,), with conds[i] paired to x0[i]."""
    sigma = backend.sigma_from_u(u)
    x_t = backend.noisy(x0, noise, sigma)
    denoised = backend.denoise(x_t, sigma, conds)
    c_out = backend.c_out(sigma)
    if options.loss_type == "l2":
        loss = per_sample_loss(denoised, x0, c_out)
    else:
        residual = (denoised.float() - x0.float()) / c_out.float().reshape(-1, *[1] * (x0.dim() - 1))
        c = None
        if options.loss_type in ("huber", "smooth_l1"):
            c = huber_threshold(options, timestep_fraction(backend, sigma, u), snr(backend, sigma).cpu())
        loss = elementwise(residual, options, c).flatten(1).mean(dim=1)
    weight = loss_weight(backend, sigma, c_out, options)
    return loss if weight is None else loss * weight.to(loss)
