"""Names the trainer writes for a LoRA trained on a ComfyUI model: ComfyUI module path -> kohya key ComfyUI maps."""

from __future__ import annotations

from .families import FAMILIES
from .families.rule import flatten

_TE_PREFIXES = {"clip_l.transformer.": "te1", "clip_h.transformer.": "te1", "clip_g.transformer.": "te2",
                "t5xxl.transformer.": "te3"}


def comfyui_kohya_names(family: str, comfy_module_paths: list[str]) -> dict[str, str]:
    """e.g. sd15: "input_blocks.1.1.transformer_blocks.0.attn1.to_q" ->
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" (kohya keeps diffusers block names for
    SD1); every other family: "lora_unet_" + path with '.' -> '_'. Text encoder paths (clip_l.transformer....) get
    the family's lora_te prefix."""
    fam = FAMILIES.get(family)
    out = {}
    for path in comfy_module_paths:
        name = path.removeprefix("diffusion_model.")
        te = next((c for p, c in _TE_PREFIXES.items() if name.startswith(p)), None)
        if te is not None:
            rest = name.split(".transformer.", 1)[1]
            prefix = fam.text_encoders.get(te, (f"lora_{te}_",))[0] if fam else "lora_te_"
            if fam and fam.name == "sdxl" and te == "te1":
                prefix = "lora_te1_"
            out[path] = prefix + flatten(rest)
            continue
        if fam is not None and fam.comfy_side == "diffusers":
            m = fam.index.match(name, False, sides=("original",))
            if m is not None and not m.rule.fused:
                name = m.part_name(0)
        out[path] = "lora_unet_" + flatten(name)
    return out


comfyui_names_for = comfyui_kohya_names
