"""The training loop's Backend for a ComfyUI ModelPatcher.

Everything architecture-specific (input scaling, timestep mapping, extra conditioning such as SDXL's
size vector or Flux's guidance) is left to ComfyUI's own ``BaseModel.apply_model``, which returns the
denoised x0 estimate D. The loop turns D into the model's native loss with ``c_out`` (DESIGN.md §2).
"""

from __future__ import annotations

from typing import Any

import torch

import comfy.model_management
import comfy.samplers
import comfy.sampler_helpers

# Keep u away from the ends: sigma(0) = 0 would make c_out zero, and sigma(1) is infinite for
# some discrete schedules (ComfyUI's percent_to_sigma(0) returns 1e9).
_U_EPS = 1e-4


class SampleCond:
    """One caption's conditioning, turned into the model's inputs (c_crossattn, y, guidance, ...)."""

    def __init__(self, model_conds: dict[str, Any]):
        self.model_conds = model_conds

    def inputs(self) -> dict[str, Any]:
        return {k: c.process_cond(batch_size=1, area=None) for k, c in self.model_conds.items()}


def encode_sample_cond(patcher, conditioning: list, latent: torch.Tensor, seed: int) -> SampleCond:
    """Run the model's ``extra_conds`` for one latent, exactly as the sampler would for one cond.

    conditioning: ComfyUI CONDITIONING ([[cross_attn, {"pooled_output": ...}], ...]); only its first entry
    is used (a caption encodes to one). latent: (C, H, W), already process_latent_in-ed.
    """
    device = patcher.load_device
    converted = comfy.sampler_helpers.convert_cond(conditioning[:1])
    batch = latent.unsqueeze(0)
    encoded = comfy.samplers.encode_model_conds(
        patcher.model.extra_conds, converted, batch, device, "positive", latent_image=batch, seed=seed
    )
    return SampleCond(encoded[0]["model_conds"])


class ComfyBackend:
    """lora_core Backend over ComfyUI's BaseModel: D(x_t) = apply_model(x_t, sigma, **conds)."""

    def __init__(self, patcher):
        self.patcher = patcher
        self.model = patcher.model
        self.root = self.model.diffusion_model
        self.sampling = self.model.model_sampling
        self.device = patcher.load_device
        self.prediction = type(self.sampling).__name__

    def sigma_from_u(self, u: torch.Tensor) -> torch.Tensor:
        # percent_to_sigma(p) maps sampling progress p (0 = start = most noise) to sigma with the model's
        # own schedule and shift, so u (0 = clean) is 1 - p.
        u = u.clamp(_U_EPS, 1.0 - _U_EPS)
        sigmas = [self.sampling.percent_to_sigma(1.0 - float(x)) for x in u]
        return torch.tensor(sigmas, dtype=torch.float32, device=self.device)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.sampling.noise_scaling(sigma, noise, x0)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(sigma.shape[0], 1, device=sigma.device, dtype=torch.float32)
        return self.sampling.calculate_denoised(sigma, ones, torch.zeros_like(ones)).flatten()

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, conds: list[SampleCond]) -> torch.Tensor:
        # Each sample keeps its own caption: the conds are concatenated along the batch in the same
        # order as x_t, never crossed with every latent as the sampler's cond batching would.
        c = comfy.samplers.cond_cat([cond.inputs() for cond in conds])
        c["transformer_options"] = {"sigmas": sigma, "cond_or_uncond": [0], "uuids": []}
        return self.model.apply_model(x_t, sigma, **c)


def make_weights_autograd_safe(root: torch.nn.Module) -> int:
    """Swap inference-mode weights for ordinary copies of the same values; returns how many were swapped.

    Loaders run under inference_mode, so the model's weights are inference tensors, and autograd refuses to
    save them for backward (every frozen layer after the first LoRA needs its weight to pass gradients
    back). ComfyUI's native trainer avoids this only because it rebuilds every weight through a wrapper.
    The swap is invisible to the rest of the graph: same values, same dtype and device, no grad.
    Call under ``torch.inference_mode(False)``.
    """
    swapped = 0
    for module in root.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_inference():
                setattr(module, name, torch.nn.Parameter(param.clone(), requires_grad=False))
                swapped += 1
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None and buffer.is_inference():
                module._buffers[name] = buffer.clone()
                swapped += 1
    return swapped


def load_for_training(patcher, sample_shape: tuple[int, ...], batch_size: int) -> None:
    """Load the model through ComfyUI's memory manager, leaving room for training activations.

    No forced full load: with the LoRA as a bypass side path, lowvram/partial loading keeps working.
    """
    shape = (batch_size,) + tuple(sample_shape)
    # Backward keeps every activation of the forward pass; ComfyUI's inference estimate times a
    # conservative factor leaves that room.
    memory = patcher.memory_required(shape) * 3
    comfy.model_management.load_models_gpu([patcher], memory_required=memory)
