"""The training objective, written once for every model through the denoiser D(x_t).

D is affine in the raw network output: D = a(sigma) x_t + c_out(sigma) raw. So for the native target
raw* (eps, v or flow velocity), (D - x0) = c_out (raw - raw*) and

    ||raw - raw*||^2 = ||D - x0||^2 / c_out(sigma)^2

which is the model's native loss exactly, with no model-specific code here. Robust losses act on the same
native residual (D - x0) / c_out, and loss weights (min-SNR, debiased) are factors written in sigma.

A loss mask (data/masks.py: a weight per latent cell, broadcast over channels and frames) multiplies each
element's loss before the mean over all elements, as kohya does: the mean is not renormalised by the masked
area, so a sample's loss shrinks with its mask (and a mask of ones changes no bit).
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


def masked(loss: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """Element-wise loss (B, C, [T,] h, w) times the latent-grid masks (B, h, w); unchanged without masks."""
    if masks is None:
        return loss
    grid = masks.reshape(masks.shape[0], *[1] * (loss.dim() - 3), *masks.shape[1:])
    return loss * grid.to(device=loss.device, dtype=loss.dtype)


def per_sample_loss(denoised: torch.Tensor, x0: torch.Tensor, c_out: torch.Tensor,
                    masks: torch.Tensor | None = None) -> torch.Tensor:
    """mean over non-batch dims of mask * (D - x0)^2, divided by c_out^2; computed in fp32. Shape (B,)."""
    err = masked((denoised.float() - x0.float()).pow(2), masks).flatten(1).mean(dim=1)
    return err / c_out.float().reshape(-1).pow(2)


def diffusion_loss(
    backend: Backend, x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor, conds: list[Any],
    options: LossOptions = _NATIVE, masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample loss of `backend` at noise levels u (B,), with conds[i] paired to x0[i]; masks (B, h, w): loss
    weights on the latent grid (None: all ones)."""
    sigma = backend.sigma_from_u(u)
    x_t = backend.noisy(x0, noise, sigma)
    denoised = backend.denoise(x_t, sigma, conds)
    c_out = backend.c_out(sigma)
    if options.loss_type == "l2":
        loss = per_sample_loss(denoised, x0, c_out, masks)
    else:
        residual = (denoised.float() - x0.float()) / c_out.float().reshape(-1, *[1] * (x0.dim() - 1))
        c = None
        if options.loss_type in ("huber", "smooth_l1"):
            c = huber_threshold(options, timestep_fraction(backend, sigma, u), snr(backend, sigma).cpu())
        loss = masked(elementwise(residual, options, c), masks).flatten(1).mean(dim=1)
    weight = loss_weight(backend, sigma, c_out, options)
    return loss if weight is None else loss * weight.to(loss)
