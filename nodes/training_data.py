"""Turn a DATASET plus the graph's VAE and text encoder into the trainer's samples.

Each image is VAE-encoded once (``process_latent_in`` puts it in the space the model trains in) and each
distinct caption encoded once, to the CONDITIONING CLIPTextEncode would give; kohya repeats only repeat the
reference. Tensors made under ComfyUI's inference_mode are copied, since autograd may not save them.
"""

from __future__ import annotations

import torch

from ..lora_core.trainer import TrainSample, usable_in_autograd
from .comfy_backend import encode_sample_cond


def encode_latents(vae, patcher, dataset) -> list[torch.Tensor]:
    """One latent per dataset image (not per repeat)."""
    latents = []
    for image in dataset.images:
        raw = vae.encode(image.pixels.unsqueeze(0)[..., :3])
        latents.append(patcher.model.process_latent_in(raw)[0].float())
    return latents


def encode_captions(clip, captions: list[str]) -> dict[str, list]:
    """Each distinct caption encoded once."""
    return {text: clip.encode_from_tokens_scheduled(clip.tokenize(text)) for text in dict.fromkeys(captions)}


def build_samples(patcher, device, dataset, latents: list[torch.Tensor], cond_by_caption: dict[str, list],
                  seed: int) -> list[TrainSample]:
    """Samples in the dataset's expanded (repeats) order; call under torch.inference_mode(False)."""
    unique = {}
    for image, latent in zip(dataset.images, latents):
        latent = usable_in_autograd(latent.to(device))
        cond = encode_sample_cond(patcher, usable_in_autograd(cond_by_caption[image.caption]), latent, seed)
        unique[id(image)] = TrainSample(latent=latent, cond=cond, caption=image.caption)
    return [unique[id(image)] for image in dataset.expanded()]
