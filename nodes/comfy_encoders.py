"""ComfyUI's VAE and CLIP as lora_core Encoders: what they encode, and who they are (for cache keys).

An encoder's identity is a fingerprint of its weights (lora_core.cache_keys.weights_fingerprint) plus what
changes its output without changing those weights: the compute dtype, LoRA patches applied on load
(LoraLoader before the CLIP), CLIPSetLastLayer's layer, tokenizer options.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..lora_core.cache.keys import weights_fingerprint


def vae_identity(vae) -> str:
    model = vae.first_stage_model
    extra = {"class": type(model).__name__, "dtype": str(getattr(vae, "vae_dtype", "")),
             "patches": _patches_fingerprint(getattr(vae, "patcher", None))}
    return weights_fingerprint(model.state_dict().items(), extra=extra)


def clip_identity(clip) -> str:
    model = clip.cond_stage_model
    extra = {"class": type(model).__name__, "layer_idx": getattr(clip, "layer_idx", None),
             "tokenizer_options": repr(sorted(getattr(clip, "tokenizer_options", {}).items())),
             "patches": _patches_fingerprint(getattr(clip, "patcher", None)),
             "compute_dtype": str(_compute_dtype(getattr(clip, "patcher", None)))}
    return weights_fingerprint(model.state_dict().items(), extra=extra)


def vae_encoder(vae) -> Callable[[torch.Tensor], torch.Tensor]:
    """(N, H, W, 3) in [0, 1] -> VAE.encode: (1, C, h, w) for an image, (1, C, T', h, w) for a clip (video VAEs)."""
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return vae.encode(pixels[..., :3]).float()
    return encode


def clip_encoder(clip) -> Callable[[str], Any]:
    """A caption -> the CONDITIONING CLIPTextEncode would give."""
    def encode(text: str) -> Any:
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))
    return encode


def with_size_conditioning(conditioning: list, original: tuple[int, int], crop: tuple[int, int],
                           target: tuple[int, int]) -> list:
    """SDXL's micro-conditioning, per sample and from the real values, in the names ComfyUI's SDXL reads
    (width/height = original size, crop_w/crop_h = crop left/top, target_width/target_height)."""
    extra = {"width": original[0], "height": original[1], "crop_w": crop[0], "crop_h": crop[1],
             "target_width": target[0], "target_height": target[1]}
    return [[entry[0], {**entry[1], **extra}] + list(entry[2:]) for entry in conditioning]


def uses_size_conditioning(patcher) -> bool:
    """SDXL and its refiner embed (original size, crop, target size); their model classes say so."""
    return any(cls.__name__ in ("SDXL", "SDXLRefiner") for cls in type(patcher.model).__mro__)


def _compute_dtype(patcher) -> Any:
    """The dtype a patcher's layers compute in when ComfyUI casts them (set_model_compute_dtype; None: stored)."""
    try:
        return patcher.get_model_object("manual_cast_dtype")
    except (AttributeError, KeyError):
        return None


def _patches_fingerprint(patcher) -> list:
    """Content of the LoRA/patch list a ModelPatcher applies on load (uuids are random, so not used)."""
    patches = getattr(patcher, "patches", None) or {}
    out = []
    for key in sorted(patches):
        for patch in patches[key]:
            strength, value = patch[0], patch[1]
            tensors = list(_tensors(value))
            out.append([key, float(strength) if isinstance(strength, (int, float)) else repr(strength),
                        weights_fingerprint((str(i), t) for i, t in enumerate(tensors))])
    return out


def _tensors(value: Any, depth: int = 0):
    if depth > 4:
        return
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v, depth + 1)
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            yield from _tensors(value[k], depth + 1)
    elif hasattr(value, "weights"):  # comfy.weight_adapter adapters keep their tensors in .weights
        yield from _tensors(value.weights, depth + 1)
