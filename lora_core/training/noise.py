"""Noise for one sample: Gaussian, plus kohya's noise offset (a random per-channel constant), whose
strength may grow with the latent's channel means (adaptive_noise_scale). Drawn from the run's generator."""

from __future__ import annotations

import torch

from .loss_options import LossOptions


def sample_noise(latent: torch.Tensor, generator: torch.Generator, options: LossOptions) -> torch.Tensor:
    """Noise shaped like latent (C, ...), on CPU."""
    noise = torch.randn(latent.shape, generator=generator)
    if not options.noise_offset:
        return noise
    channel_shape = (latent.shape[0],) + (1,) * (latent.dim() - 1)
    offset = torch.full(channel_shape, float(options.noise_offset))
    if options.adaptive_noise_scale:
        means = latent.detach().float().cpu().mean(dim=tuple(range(1, latent.dim())), keepdim=True).abs()
        offset = (offset + options.adaptive_noise_scale * means).clamp(min=0.0)
    return noise + offset * torch.randn(channel_shape, generator=generator)
