"""The text encoders inside a ComfyUI CLIP that can carry a LoRA, and the kohya key prefixes ComfyUI's
loader maps for them (comfy.lora.model_lora_keys_clip): CLIP-L is lora_te_ alone (SD1.5) and lora_te1_
beside CLIP-G (lora_te2_); T5 is lora_te<N>_ after the CLIPs present (Flux: lora_te2_, SD3: lora_te3_)."""

from __future__ import annotations

from torch import nn

COMPONENTS = (("clip_l", "te1"), ("clip_g", "te2"), ("t5xxl", "te3"))


def present(clip) -> dict[str, nn.Module]:
    """component (te1/te2/te3) -> the encoder's transformer module, for the encoders this CLIP has."""
    model = getattr(clip, "cond_stage_model", None)
    out = {}
    for attribute, component in COMPONENTS:
        encoder = getattr(model, attribute, None)
        transformer = getattr(encoder, "transformer", None)
        if isinstance(transformer, nn.Module):
            out[component] = transformer
    return out


def trainable(clip, train_t5: bool = False) -> dict[str, nn.Module]:
    encoders = present(clip)
    if not train_t5:
        encoders.pop("te3", None)
    return encoders


def kohya_prefixes(components: set[str]) -> dict[str, str]:
    has_l, has_g = "te1" in components, "te2" in components
    return {
        "te1": "lora_te1_" if (has_g or "te3" in components) else "lora_te_",
        "te2": "lora_te2_" if has_l else "lora_te_",
        "te3": f"lora_te{1 + has_l + has_g}_",
    }


def kohya_te_name(module: str, components: set[str]) -> str:
    """"te1:text_model.encoder.layers.0.self_attn.q_proj" -> "lora_te_text_model_encoder_layers_0_self_attn_q_proj"."""
    component, path = module.split(":", 1)
    return kohya_prefixes(components)[component] + path.replace(".", "_")
