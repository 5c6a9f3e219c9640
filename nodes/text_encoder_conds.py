"""Conditioning for text-encoder LoRA training: each step encodes the caption again, with gradients,
through the CLIP whose layers carry the adapters (no caption cache for it), then builds the model's inputs
for the paired latent exactly as a cached caption's (encode_sample_cond)."""

from __future__ import annotations

import torch

from ..lora_core.trainer import TrainSample, usable_in_autograd
from .comfy_backend import encode_sample_cond


class EncodedEachStep:
    def __init__(self, clip, patcher, caption: str, latent: torch.Tensor, seed: int):
        self.clip, self.patcher, self.latent, self.seed = clip, patcher, latent, seed
        self.tokens = clip.tokenize(caption)

    def draw(self, generator: torch.Generator):
        conditioning = self.clip.encode_from_tokens_scheduled(self.tokens)
        return encode_sample_cond(self.patcher, conditioning, self.latent, self.seed)


def text_encoder_samples(clip, patcher, device, dataset, latents: list[torch.Tensor], seed: int) -> list[TrainSample]:
    """Samples in the dataset's expanded order whose conds encode per step; call under inference_mode(False)."""
    unique = {}
    for image, latent in zip(dataset.images, latents):
        latent = usable_in_autograd(latent.to(device))
        unique[id(image)] = TrainSample(latent=latent, cond=EncodedEachStep(clip, patcher, image.caption, latent, seed),
                                        caption=image.caption)
    return [unique[id(image)] for image in dataset.expanded()]
