"""Conditioning for text-encoder LoRA training: each step encodes the caption again, with gradients,
through the CLIP whose layers carry the adapters (no caption cache for it), then builds the model's inputs
for the paired latent as a cached caption's are built (encode_sample_cond, SDXL size conditioning)."""

from __future__ import annotations

from typing import Any, Callable

from ..lora_core.data.training_samples import SampleInfo
from .comfy_backend import encode_sample_cond
from .comfy_encoders import with_size_conditioning


def encoded_each_step(clip, patcher, seed: int, sizes_of: Callable[[SampleInfo], Any],
                      references: Callable[[Any, SampleInfo], Any] = lambda cond, info: cond,
                      first_frame: Callable[[Any, SampleInfo], Any] | None = None) -> Callable[[str, SampleInfo], Any]:
    """make_cond for lora_core.training_samples (text_each_step): caption text + sample -> the step's cond.

    Called from the trainer's draw (inside the training step, grad enabled), so the encoders' adapters get
    gradients through it; in evaluating() (validation, previews) it runs without grad on the current LoRA.
    first_frame: nodes/first_frame_conds.FirstFrameConds, when each clip is conditioned on its first frame.
    """
    def make_cond(text: str, info: SampleInfo) -> Any:
        conditioning = references(clip.encode_from_tokens_scheduled(clip.tokenize(text)), info)
        if first_frame is not None:
            return first_frame(conditioning, info)
        sizes = sizes_of(info)
        if sizes is not None:
            conditioning = with_size_conditioning(conditioning, *sizes)
        return encode_sample_cond(patcher, conditioning, info.latent, seed)
    return make_cond
