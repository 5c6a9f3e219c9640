"""Train LoRA's data: a DATASET + the graph's VAE and CLIP (or a conditioning list) -> samples, order, validation.

lora_core.training_samples does the work (content-addressed cache, bucket order, cached flips and variants,
per-step captions); this file supplies ComfyUI's pieces: VAE.encode, CLIP encoding, process_latent_in, and
the model's own extra_conds per sample, with SDXL's size conditioning from each image's real sizes. Samples
that share a caption and a latent shape share one processed cond (one copy on the device, not one per
flip or variant); per-step drawn captions are processed for their step only.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..lora_core.cache.encoding_cache import EncodingCache
from ..lora_core.errors import DatasetError
from ..lora_core.data.samples import usable_in_autograd
from ..lora_core.data.training_samples import Encoders, SampleInfo, TrainingData, build_training_data
from .comfy_backend import encode_sample_cond
from .first_frame_conds import FirstFrameConds
from .reference_conds import SampleReferences, memory_shape
from .text_encoder_conds import encoded_each_step
from .comfy_encoders import (clip_encoder, clip_identity, uses_size_conditioning, vae_encoder, vae_identity,
                             with_size_conditioning)

log = logging.getLogger("lora_lab")


def prepare_training_data(patcher, dataset, vae, clip, conditioning: list | None, batch_size: int,
                          seed: int, train_text_encoder: bool = False, then=None,
                          first_frame: str | None = None) -> TrainingData:
    """Encode (or read from the cache) every latent and caption the run needs; raises DatasetError.

    Runs outside inference mode and without grad, so that what it makes can be saved by autograd later.
    train_text_encoder: captions are not encoded here but at each step, with grad, through the CLIP that
    carries the adapters (nodes/text_encoder_conds.py); no caption cache then.
    then(data, encoders, cache): more encodings made the captions' way, in the same context (preservation captions).
    first_frame: "concat" or "latent" (nodes/first_frame_conds.py): each clip's cond holds its own first frame.
    """
    if clip is None and conditioning is None:
        raise DatasetError("Train LoRA needs a clip (to encode the dataset's captions) or a conditioning list "
                           "(the dataset's captions output encoded by any text-encoder node)")
    if train_text_encoder and (clip is None or conditioning is not None):
        raise DatasetError("Text-encoder training needs Train LoRA's clip input (it encodes the captions every step "
                           "through the CLIP it trains) and no conditioning list")
    size_conditioning = uses_size_conditioning(patcher)
    shared: dict[tuple, Any] = {}
    references = SampleReferences(patcher, seed)  # edit pairs: each sample's control latents (none otherwise)
    cache = EncodingCache(dataset.cache_folder)
    first = FirstFrameConds(first_frame, patcher, vae, cache, seed) if first_frame else None

    def make_cond(cond: Any, info: SampleInfo) -> Any:
        cond = references(cond, info)
        if first is not None:  # a cond per clip: its first frame is part of it
            return first(usable_in_autograd(cond), info)
        sizes = (info.original_size, info.crop_top_left, info.target_size) if size_conditioning else None
        if info.per_step:  # a drawn caption (dropout, shuffle): used for one step, so not kept
            return encode_sample_cond(patcher, usable_in_autograd(with_size_conditioning(cond, *sizes) if sizes else cond),
                                      info.latent, seed)
        key = (id(cond), tuple(info.latent.shape), sizes)
        if key not in shared:
            if sizes is not None:
                cond = with_size_conditioning(cond, *sizes)
            shared[key] = (cond, encode_sample_cond(patcher, usable_in_autograd(cond), info.latent, seed))
        return shared[key][1]  # the entry keeps `cond` alive, so its id is not reused by another object

    def sizes_of(info: SampleInfo):
        return (info.original_size, info.crop_top_left, info.target_size) if size_conditioning else None

    text_each_step = train_text_encoder
    encoders = Encoders(
        encode_pixels=vae_encoder(vae), pixels_id=vae_identity(vae),
        encode_text=clip_encoder(clip) if clip is not None and not text_each_step else None,
        text_id=clip_identity(clip) if clip is not None and not text_each_step else "",
        latent_in=lambda raw: patcher.model.process_latent_in(raw),
        make_cond=encoded_each_step(clip, patcher, seed, sizes_of, references, first) if text_each_step else make_cond,
        text_each_step=text_each_step)
    with torch.inference_mode(False), torch.no_grad():
        data = build_training_data(dataset, encoders, cache, seed=seed, batch_size=batch_size,
                                   conditionings=list(conditioning) if conditioning is not None else None)
        if then is not None:
            then(data, encoders, cache)
    for warning in data.warnings:
        log.warning("LoRA Lab: %s", warning)
    log.info("LoRA Lab: %s", data.report)
    return data


def largest_latent_shape(data: TrainingData) -> tuple[int, ...]:
    """The biggest sample (buckets differ in shape): what the memory request must leave room for; an edit pair's
    references add their area (nodes/reference_conds.py memory_shape)."""
    references = [i.references for i in data.infos] if len(data.infos) == len(data.samples) else [()] * len(data.samples)
    shapes = [memory_shape(tuple(s.latent.shape), r) for s, r in zip(data.samples, references)]
    return max(shapes, key=lambda shape: torch.Size(shape).numel())
