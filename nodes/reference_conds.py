"""Edit models in Train LoRA: each sample's control latents in its conditioning, where ComfyUI's ReferenceLatent node
(and TextEncodeQwenImageEdit given a vae) put them: the raw VAE latents in the conditioning's `reference_latents`.

From there the model's own extra_conds (comfy/model_base.py) route them as its architecture expects, exactly as
for sampling (Flux, Kontext, Flux 2, Qwen-Image, ...: `ref_latents`, scaled by process_latent_in; anything else the
conditioning carries, such as FluxKontextMultiReferenceLatentMethod's `reference_latents_method`, goes along). Each
row of a batch carries its own references: the conds are concatenated along the batch (CONDList), and rows whose
references differ in shape go to separate model calls (ComfyBackend.denoise groups by the sampler's can_concat).
These models append the reference tokens after the noisy latent's and return the output of the latent's tokens
only, so the loss sees the target alone.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ..lora_core.data.training_samples import SampleInfo
from ..lora_core.errors import DatasetError
from .comfy_backend import encode_sample_cond
from .family import model_family

REFERENCES = "reference_latents"
log = logging.getLogger("lora_lab")


def with_references(conditioning: list, references: tuple[torch.Tensor, ...]) -> list:
    """The conditioning with `references` as its reference latents, in place of any it carried."""
    return [[entry[0], {**entry[1], REFERENCES: list(references)}] + list(entry[2:]) for entry in conditioning]


def without_references(conditioning: list) -> list:
    return [[entry[0], {k: v for k, v in entry[1].items() if k != REFERENCES}] + list(entry[2:])
            for entry in conditioning]


class SampleReferences:
    """make_cond's first step: the sample's references put in its conditioning (nothing for unpaired samples).

    The dataset's controls replace references a conditioning list brought (TextEncodeQwenImageEdit with a vae):
    those are one unflipped, uncropped copy per caption, the dataset's are fitted to each sample. The first paired
    sample checks that the model reads references at all: its extra_conds must give it an input more with them.
    """

    def __init__(self, patcher, seed: int):
        self.patcher, self.seed = patcher, seed
        self.checked = self.warned = False

    def __call__(self, conditioning: Any, info: SampleInfo) -> Any:
        if not info.references:
            return conditioning
        if not self.warned and any(REFERENCES in entry[1] for entry in conditioning):
            log.warning("LoRA Lab: the conditioning already carries reference latents (a vae on TextEncodeQwenImageEdit "
                        "or a ReferenceLatent node); training uses the dataset's control images in their place")
            self.warned = True
        paired = with_references(conditioning, info.references)
        if not self.checked:
            self._check(without_references(conditioning), paired, info.latent)
            self.checked = True
        return paired

    def _check(self, plain: list, paired: list, latent: torch.Tensor) -> None:
        inputs = set(encode_sample_cond(self.patcher, plain, latent, self.seed).model_conds)
        if set(encode_sample_cond(self.patcher, paired, latent, self.seed).model_conds) != inputs:
            return
        model = type(self.patcher.model).__name__
        raise DatasetError(
            f"This {model_family(self.patcher)} model takes no reference images: ComfyUI's {model} ignores the "
            "reference latents that 'Control Images' gives each training image (as ReferenceLatent would). Train an "
            "edit model (Flux Kontext, Flux 2, Qwen-Image edit, ...) on pairs, or disconnect 'Control Images' to "
            "train this model on the images alone")


def memory_shape(latent_shape: tuple[int, ...], references: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
    """The latent shape whose area (what ComfyUI's memory_required counts: batch x every dim after the channels) is
    the sample's own plus its references', as the sampler passes them in cond_shapes: the last side made longer."""
    if not references:
        return tuple(latent_shape)
    rows = math.prod(latent_shape[1:-1])
    extra = sum(math.prod(r.shape[2:]) for r in references)
    return (*latent_shape[:-1], latent_shape[-1] + math.ceil(extra / rows))
