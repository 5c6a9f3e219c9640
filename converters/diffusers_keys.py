"""diffusers/PEFT-side keys: `<component>.<module>.lora_A.weight` / `lora_B.weight` plus a LoraConfig per component."""

from __future__ import annotations

import json

import torch
from torch import Tensor

from .conversion_error import ConversionError
from .families import Family
from .fuse_split import unfold_mid
from .module_weights import ModuleWeights
from .peft_metadata import build_config


_TE_COMPONENTS = {"te1": "text_encoder", "te2": "text_encoder_2", "te3": "text_encoder_3", "te4": "text_encoder_4"}


def component_prefix(family: Family, component: str) -> str:
    if component == "model":
        return family.diffusers_prefix
    return family.text_encoders.get(component, ("", _TE_COMPONENTS[component]))[1]


def place(family: Family, component: str, name: str) -> tuple[str, str]:
    """(diffusers pipeline component, module name inside it) of one of our modules."""
    if component == "model":
        own = next((c for c in family.components if name.startswith(c + ".")), None)
        return (own, name[len(own) + 1:]) if own else (family.diffusers_prefix, name)
    encoder = family.encoder
    if encoder is not None and component == encoder.component and name.startswith("layers."):
        return encoder.diffusers, encoder.hf_path + name
    return component_prefix(family, component), name


def as_lora(m: ModuleWeights) -> ModuleWeights:
    """Exact LoRA form of any adapter PEFT can load as LoRA; ConversionError otherwise."""
    if m.get("dora_scale") is not None:
        raise ConversionError("DoRA with an input-axis scale (OneTrainer/LyCORIS default) has no PEFT layout "
                              "(PEFT's magnitude is per output row)")
    if m.kind == "lora":
        if m.get("diff") is not None:
            raise ConversionError("a full weight or bias delta (.diff / .diff_b) has no diffusers/PEFT form")
        return unfold_mid(m)
    if m.kind == "loha" and "hada_t1" not in m.tensors:
        # (w1a w1b) * (w2a w2b) = sum_ij (w1a_i * w2a_j)(w1b_i * w2b_j)^T : an exact LoRA of rank r1*r2
        t = m.tensors
        w1a, w1b, w2a, w2b = t["hada_w1_a"], t["hada_w1_b"], t["hada_w2_a"], t["hada_w2_b"]
        up = (w1a[:, :, None] * w2a[:, None, :]).reshape(w1a.shape[0], -1)
        down = (w1b[:, None, :] * w2b[None, :, :]).reshape(-1, w1b.shape[1])
        return _rebuild(m, down, up)
    if m.kind == "lokr" and "lokr_w2_b" in m.tensors and "lokr_t2" not in m.tensors and m.tensors["lokr_w2_a"].dim() == 2:
        # kron(w1, w2a @ w2b) = kron(w1, w2a) @ kron(I, w2b): an exact LoRA of rank in1 * r
        t = m.tensors
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()
        w1 = w1.to(t["lokr_w2_a"].dtype)
        up = torch.kron(w1, t["lokr_w2_a"])
        down = torch.kron(torch.eye(w1.shape[1], dtype=w1.dtype, device=w1.device), t["lokr_w2_b"])
        return _rebuild(m, down, up)
    if m.kind == "diff":
        raise ConversionError("a full weight or bias delta (.diff / .diff_b) has no diffusers/PEFT form")
    raise ConversionError(f"{m.kind} adapter has no exact diffusers/PEFT LoRA form")


def _rebuild(m: ModuleWeights, down: Tensor, up: Tensor) -> ModuleWeights:
    extras = {k: v for k, v in m.tensors.items() if k in ("diff_b", "magnitude")}
    return ModuleWeights("lora", {"down": down, "up": up, **extras}, alpha=m.scale * down.shape[0])


def diffusers_tensors(family: Family, component: str, name: str, m: ModuleWeights) -> tuple[dict[str, Tensor], dict]:
    """Keys for one module and its config entry {"rank", "alpha", "dora", "bias", "component", "module"} (the
    pipeline component and the module's name in it)."""
    if component == "model" and family.comfy_only and name.startswith(family.comfy_only):
        raise ConversionError(f"no diffusers name map for {family.name}'s {name.split('.')[0]} here")
    lora = as_lora(m)
    pipeline_component, inner = place(family, component, name)
    base = f"{pipeline_component}.{inner}"
    out = {f"{base}.lora_A.weight": lora.tensors["down"], f"{base}.lora_B.weight": lora.tensors["up"]}
    rank, scale = lora.rank, lora.scale
    if "magnitude" in lora.tensors:
        magnitude = lora.tensors["magnitude"]  # PEFT layout: (out,) for Linear, (1, out, 1, 1) for Conv
        if lora.tensors["down"].dim() > 2:
            magnitude = magnitude.reshape(1, -1, *[1] * (lora.tensors["down"].dim() - 2))
        out[f"{base}.lora_magnitude_vector"] = magnitude
    if "diff_b" in lora.tensors:  # PEFT lora_bias lives in lora_B and is scaled with it
        b = lora.tensors["diff_b"]
        out[f"{base}.lora_B.bias"] = (b.float() / scale).to(b.dtype)
    entry = {"rank": rank, "alpha": scale * rank, "dora": "magnitude" in lora.tensors, "bias": "diff_b" in lora.tensors,
             "component": pipeline_component, "module": inner}
    return out, entry


def adapter_metadata(family: Family, config: dict[str, dict[str, dict]]) -> str:
    """The `lora_adapter_metadata` header value: one LoraConfig per pipeline component, keys prefixed as diffusers
    saves them. config: pipeline component -> module name in it -> entry (from diffusers_tensors)."""
    packed = {}
    for component, entries in config.items():
        lora_config = build_config({n: e["rank"] for n, e in entries.items()}, {n: e["alpha"] for n, e in entries.items()},
                                   any(e["dora"] for e in entries.values()), any(e["bias"] for e in entries.values()))
        packed.update({f"{component}.{k}": v for k, v in lora_config.items()})
    return json.dumps(packed, sort_keys=True)
