"""Where a LoRA module lands in a model file: its weight (and bias) key, and the rows of it that it covers.

Denoiser modules carry the model's own names; a checkpoint stores them under `model.diffusion_model.`, a
diffusion-model file bare. Text encoders are found under the prefixes ComfyUI and SGM checkpoints use; SDXL's
OpenCLIP-G keeps q, k and v fused in `attn.in_proj_weight`, so its q/k/v LoRAs land on thirds of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DENOISER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
TEXT_ENCODER_PREFIXES = {
    "te1": ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.", "text_encoders.clip_l.transformer.",
            "cond_stage_model.clip_l.transformer."),
    "te2": ("text_encoders.clip_g.transformer.", "cond_stage_model.clip_g.transformer.", "text_encoders.t5xxl.transformer."),
    "te3": ("text_encoders.t5xxl.transformer.", "cond_stage_model.t5xxl.transformer."),
}
OPEN_CLIP = "conditioner.embedders.1.model.transformer.resblocks."
_CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(self_attn\.[qkv]_proj|self_attn\.out_proj|mlp\.fc1|mlp\.fc2)$")
_OPEN_CLIP_NAMES = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


@dataclass(frozen=True)
class Target:
    weight: str
    bias: str | None = None
    rows: tuple[int, int] | None = None  # (start, count) of the weight's rows the module covers


def _open_clip(name: str, keys: set[str], shapes) -> Target | None:
    m = _CLIP_LAYER.match(name)
    if not m:
        return None
    block, module = OPEN_CLIP + m.group(1) + ".", m.group(2)
    if module in _OPEN_CLIP_NAMES:
        base = block + _OPEN_CLIP_NAMES[module]
        return Target(base + ".weight", base + ".bias") if base + ".weight" in keys else None
    weight = block + "attn.in_proj_weight"
    if weight not in keys:
        return None
    width = shapes(weight)[0] // 3
    start = "qkv".index(module[len("self_attn.")]) * width
    return Target(weight, block + "attn.in_proj_bias", (start, width))


def locate(component: str, name: str, rows: tuple[int, int] | None, keys: set[str], shapes) -> Target | None:
    """The model-file target of module `name` (a slice: rows of it), or None when the model has no such weight."""
    prefixes = DENOISER_PREFIXES if component == "model" else TEXT_ENCODER_PREFIXES.get(component, ())
    for prefix in prefixes:
        for weight in (f"{prefix}{name}.weight", f"{prefix}{name}"):  # a module's weight, or a parameter itself
            if weight in keys:
                bias = f"{prefix}{name}.bias"
                return Target(weight, bias if bias in keys else None, rows)
    if component == "te2":
        return _open_clip(name, keys, shapes)
    return None
