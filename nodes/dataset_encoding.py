"""Train LoRA's data preparation: a dataset + ComfyUI's VAE and CLIP (or a conditioning list) -> samples.

lora_core.training_samples does the work (cache, buckets, variants, per-step captions); this file supplies
ComfyUI's pieces: VAE.encode, CLIP encoding, process_latent_in, and the model's own extra_conds per sample
(with SDXL's size conditioning from each image's real sizes).
"""

from __future__ import annotations

import logging
from typing import Any

from ..lora_core.encoding_cache import EncodingCache
from ..lora_core.errors import DatasetError
from ..lora_core.trainer import usable_in_autograd
from ..lora_core.training_samples import Encoders, SampleInfo, TrainingData, build_training_data
from .comfy_backend import encode_sample_cond
from .comfy_encoders import (clip_encoder, clip_identity, uses_size_conditioning, vae_encoder, vae_identity,
                             with_size_conditioning)

log = logging.getLogger("lora_lab")


def prepare_training_data(patcher, dataset, vae, clip, conditioning: list | None, batch_size: int,
                          seed: int) -> TrainingData:
    """Encode (or read from the cache) every latent and caption the run needs; raises DatasetError."""
    if clip is None and conditioning is None:
        raise DatasetError("Train LoRA needs a clip (to encode the dataset's captions) or a conditioning list "
                           "(the dataset's captions output encoded by any text-encoder node)")
    size_conditioning = uses_size_conditioning(patcher)

    def make_cond(cond: Any, info: SampleInfo) -> Any:
        if size_conditioning:
            cond = with_size_conditioning(cond, info.original_size, info.crop_top_left, info.target_size)
        return encode_sample_cond(patcher, usable_in_autograd(cond), info.latent, seed)

    encoders = Encoders(
        encode_pixels=vae_encoder(vae), pixels_id=vae_identity(vae),
        encode_text=clip_encoder(clip) if clip is not None else None,
        text_id=clip_identity(clip) if clip is not None else "",
        latent_in=lambda raw: patcher.model.process_latent_in(raw), make_cond=make_cond)
    cache = EncodingCache(dataset.cache_folder)
    data = build_training_data(dataset, encoders, cache, seed=seed, batch_size=batch_size,
                               conditionings=list(conditioning) if conditioning is not None else None)
    for warning in data.warnings:
        log.warning("LoRA Lab: %s", warning)
    log.info("LoRA Lab: %s", data.report)
    return data
