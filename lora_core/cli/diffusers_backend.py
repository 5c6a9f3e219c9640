"""Backends for plain diffusers models (tests, CLI demo, reference runs).

Both follow ComfyUI's conventions so the trainer sees one kind of model:
  DDPM UNet (eps / v):  sigma_k = sqrt((1 - abar_k) / abar_k),  x_t = x0 + sigma * noise,
                        network input x_t / sqrt(1 + sigma^2) (= sqrt(abar) x0 + sqrt(1-abar) noise)
  flow transformer:     sigma = shift u / (1 + (shift - 1) u),  x_t = (1 - sigma) x0 + sigma * noise,
                        network output v = noise - x0,  D = x_t - sigma v
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import TrainingError
from .edit_models import flux_ids, flux_reference_tokens, one_reference_shape, packed_flux
from .i2v_models import token_timesteps, with_known_frames


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(-1, *([1] * (like.dim() - 1))).to(like)


def _stack(conds: list[Any], key: str, device: torch.device) -> torch.Tensor:
    """Stack one field of per-sample conds (dicts, or bare tensors for encoder_hidden_states)."""
    try:
        parts = [c if isinstance(c, torch.Tensor) and key == "encoder_hidden_states" else c[key] for c in conds]
        return torch.stack(parts).to(device)
    except KeyError:
        raise TrainingError(f"conditioning lacks {key!r}") from None
    except RuntimeError as e:
        raise TrainingError(f"conditionings of one batch differ in shape for {key!r}: {e}") from None


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class DDPMUNetBackend:
    """UNet2DConditionModel with a discrete DDPM schedule; prediction "eps" or "v"."""

    def __init__(
        self,
        unet: nn.Module,
        prediction: str = "eps",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        num_train_timesteps: int = 1000,
        device: torch.device | None = None,
    ):
        from diffusers import DDPMScheduler

        if prediction not in ("eps", "v"):
            raise TrainingError(f"DDPM prediction must be 'eps' or 'v', got {prediction!r}")
        self.root = unet
        self.prediction = prediction
        self.device = device or _model_device(unet)
        sched = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end, beta_schedule=beta_schedule
        )
        abar = sched.alphas_cumprod.double()
        self.sigmas = ((1 - abar) / abar).sqrt().float().to(self.device)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Discrete timestep index whose sigma is nearest (exact for sigmas from sigma_from_u)."""
        return (self.sigmas[None, :] - sigma.to(self.sigmas)[:, None]).abs().argmin(dim=1)

    def sigma_from_u(self, u: torch.Tensor) -> torch.Tensor:
        index = (u.to(self.device) * (len(self.sigmas) - 1)).round().long()
        return self.sigmas[index]

    def timestep_fraction(self, sigma: torch.Tensor) -> torch.Tensor:
        """Discrete timestep / num_train_timesteps (kohya's t / 1000)."""
        return self.timestep(sigma).float() / len(self.sigmas)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x0 + _bcast(sigma, x0) * noise

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        s = _bcast(sigma, x_t)
        ehs = _stack(conds, "encoder_hidden_states", self.device)
        extra = {}
        if isinstance(conds[0], dict) and "time_ids" in conds[0]:  # SDXL's pooled text and size conditioning
            extra["added_cond_kwargs"] = {k: _stack(conds, k, self.device) for k in ("text_embeds", "time_ids")}
        raw = self.root(x_t / (1 + s**2).sqrt(), self.timestep(sigma), encoder_hidden_states=ehs, **extra).sample
        if self.prediction == "eps":
            return x_t - s * raw
        return x_t / (1 + s**2) - raw * s / (1 + s**2).sqrt()

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.float()
        return -sigma if self.prediction == "eps" else -sigma / (1 + sigma**2).sqrt()


class FlowTransformerBackend:
    """Rectified-flow transformers: Sana, Flux, SD3 (2D) and Wan (3D, latents (C, T, H, W)); v = noise - x0.

    conds[i]: dict with "encoder_hidden_states" (L, D) and, for Flux and SD3, "pooled_projections" (D_pool,).
    """

    def __init__(
        self,
        transformer: nn.Module,
        shift: float = 1.0,
        guidance: float = 3.5,
        device: torch.device | None = None,
    ):
        self.root = transformer
        self.prediction = "flow"
        self.shift = float(shift)
        self.guidance = float(guidance)
        self.device = device or _model_device(transformer)
        self.is_flux = type(transformer).__name__.startswith("Flux")
        self.kind = next((k for k in ("Flux", "SD3", "Wan") if type(transformer).__name__.startswith(k)), "Sana")

    def sigma_from_u(self, u: torch.Tensor) -> torch.Tensor:
        u = u.to(self.device).float()
        return self.shift * u / (1 + (self.shift - 1) * u)

    def timestep_fraction(self, sigma: torch.Tensor) -> torch.Tensor:
        """Flow models' timestep is sigma (x 1000), shift included: Wan 2.2's expert boundary is on it."""
        return sigma.float()

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = _bcast(sigma, x0)
        return (1 - s) * x0 + s * noise

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        ehs = _stack(conds, "encoder_hidden_states", self.device)
        if self.kind == "Wan":  # TI2V-5B's known first frame: kept in the input and the output (no loss there)
            x_t = with_known_frames(x_t, conds)
            return with_known_frames(x_t - _bcast(sigma, x_t) * self._wan_velocity(x_t, sigma, ehs, conds), conds)
        if self.kind == "Flux":
            v = self._flux_velocity(x_t, sigma, ehs, conds)
        elif self.kind == "SD3":
            v = self.root(hidden_states=x_t, encoder_hidden_states=ehs, timestep=sigma * 1000,
                          pooled_projections=_stack(conds, "pooled_projections", self.device), return_dict=False)[0]
        else:  # Sana's pipeline passes scheduler timesteps in [0, 1000]
            v = self._sana_velocity(x_t, sigma, ehs)
        return x_t - _bcast(sigma, x_t) * v

    def _sana_velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, ehs: torch.Tensor) -> torch.Tensor:
        # Sana's pipeline passes scheduler timesteps in [0, 1000]
        return self.root(x_t, encoder_hidden_states=ehs, timestep=sigma * 1000, return_dict=False)[0]

    def _wan_velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, ehs: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        """WanPipeline / WanImageToVideoPipeline's call: timesteps in [0, 1000]; an I2V model's condition channels
        after the latent's, its image states, TI2V's per-token timesteps."""
        hidden, kwargs = x_t, {}
        if isinstance(conds[0], dict) and "condition" in conds[0]:
            hidden = torch.cat([x_t, _stack(conds, "condition", self.device).to(x_t)], dim=1)
        if isinstance(conds[0], dict) and "image_embeds" in conds[0]:
            kwargs["encoder_hidden_states_image"] = _stack(conds, "image_embeds", self.device).to(ehs)
        timestep = token_timesteps(sigma * 1000, x_t, conds, tuple(self.root.config.patch_size))
        return self.root(hidden, encoder_hidden_states=ehs, timestep=timestep, return_dict=False, **kwargs)[0]

    def _flux_velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, ehs: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        b, c, h, w = x_t.shape
        if h % 2 or w % 2:
            raise TrainingError(f"Flux latents need even height/width, got {h}x{w}")
        if not one_reference_shape(conds):  # Kontext references of their own sizes: one row per call
            return torch.cat([self._flux_velocity(x_t[i:i + 1], sigma[i:i + 1], ehs[i:i + 1], conds[i:i + 1])
                              for i in range(b)])
        packed, img_ids = packed_flux(x_t), flux_ids(h, w, 0, self.device)
        tokens = packed.shape[1]
        references = flux_reference_tokens(conds, packed)  # Kontext: the reference's tokens follow the latent's
        if references is not None:
            packed, img_ids = torch.cat([packed, references[0]], dim=1), torch.cat([img_ids, references[1]])
        kwargs = {}
        if getattr(self.root.config, "guidance_embeds", False):
            kwargs["guidance"] = torch.full((b,), self.guidance, device=self.device)
        out = self.root(
            hidden_states=packed,
            encoder_hidden_states=ehs,
            pooled_projections=_stack(conds, "pooled_projections", self.device),
            timestep=sigma,  # Flux multiplies by 1000 inside
            img_ids=img_ids,
            txt_ids=torch.zeros(ehs.shape[1], 3, device=self.device),
            return_dict=False,
            **kwargs,
        )[0][:, :tokens]
        return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        return -sigma.float()
