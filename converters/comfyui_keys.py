"""ComfyUI-side keys: kohya style (`lora_unet_<flat name>.lora_down.weight`, `.alpha`) as ComfyUI's loader maps them."""

from __future__ import annotations

import torch
from torch import Tensor

from .families import Family
from .families.rule import flatten
from .module_weights import ModuleWeights
from .plan import OutModule

_SUFFIX = {"down": "lora_down.weight", "up": "lora_up.weight", "mid": "lora_mid.weight", "diff": "diff",
           "diff_b": "diff_b", "dora_scale": "dora_scale"}

# Parameters (not module weights): ComfyUI maps them only by their full `diffusion_model.` name.
PARAMETERS = ("modulation", "scale_shift_table")


def module_key(family: Family, component: str, name: str) -> str:
    if component == "model":
        if name.endswith(PARAMETERS) and not name.endswith("modulation.lin"):
            return f"diffusion_model.{name}"
        return "lora_unet_" + flatten(name)
    encoder = family.encoder
    if encoder is not None and component == encoder.component and name.startswith("layers."):
        return encoder.comfy_name(name)  # an LLM encoder: the form ComfyUI maps on every snapshot that has it
    if component in family.te_comfy:
        return family.te_comfy[component] + name
    prefix = family.text_encoders.get(component, (f"lora_{component}_", ""))[0]
    return prefix + flatten(name)


def comfyui_tensors(family: Family, out: OutModule) -> dict[str, Tensor]:
    """A slice (one part of a fused layer) goes under the part's own name, which ComfyUI maps onto its rows."""
    base = family.slice_prefix + out.part if out.part is not None else module_key(family, out.component, out.name)
    return kohya_tensors(base, out.weights)


def kohya_tensors(base: str, m: ModuleWeights) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for role, t in m.tensors.items():
        if role == "magnitude":  # PEFT (out,) -> ComfyUI dora_scale on the output axis (out, 1[, 1, 1])
            dims = m.tensors["down"].dim() if "down" in m.tensors else 2
            out[f"{base}.dora_scale"] = t.reshape(-1, *[1] * (dims - 1))
        else:
            out[f"{base}.{_SUFFIX.get(role, role)}"] = t
    if m.kind in ("lora", "loha", "lokr") and m.rank is not None:
        alpha = m.scale * m.rank  # kohya semantics (alpha / rank); rsLoRA becomes alpha * sqrt(rank)
        out[f"{base}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out
