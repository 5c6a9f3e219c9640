"""LLM text-encoder LoRAs in every spelling in circulation convert to the one name ComfyUI maps on both snapshots
(text_encoders.<attribute>.transformer.model.<module>), with the same deltas, and back to diffusers/PEFT."""

from __future__ import annotations

import pytest
import torch

from convert_deltas import assert_same_deltas, module_deltas
from lora_lab.converters import convert_state_dict
from lora_lab.converters.families import FAMILIES

MODULES = {"self_attn.q_proj": "q", "self_attn.k_proj": "kv", "mlp.gate_proj": "mlp", "mlp.down_proj": "down"}


def _lora(prefix: str, flat: bool, encoder, layer: int = 3, alpha: float | None = 2.0, divisor: int = 16) -> dict:
    """q, k, gate and down of one decoder layer, every width divided by `divisor` (the ratios are the encoder's)."""
    g = torch.Generator().manual_seed(layer)
    sd = {}
    for module, kind in MODULES.items():
        rows, cols = {"q": (encoder.q, encoder.width), "kv": (encoder.kv, encoder.width),
                      "mlp": (encoder.mlp, encoder.width), "down": (encoder.width, encoder.mlp)}[kind]
        name = f"layers.{layer}.{module}"
        base = prefix + (name.replace(".", "_") if flat else name)
        down, up = torch.randn(4, cols // divisor, generator=g), torch.randn(rows // divisor, 4, generator=g)
        if flat:
            sd.update({f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up})
        else:
            sd.update({f"{base}.lora_A.weight": down, f"{base}.lora_B.weight": up})
        if alpha is not None:
            sd[f"{base}.alpha"] = torch.tensor(alpha)
    return sd


# (family, encoder attribute)
ENCODERS = [("anima", "qwen3_06b"), ("z_image", "qwen3_4b"), ("flux2", "qwen3_4b"), ("flux2", "qwen3_8b"),
            ("flux2", "mistral3_24b"), ("qwen_image", "qwen25_7b"), ("lumina2", "gemma2_2b"), ("hidream", "llama"),
            ("krea2", "qwen3vl_4b"), ("ltx2", "gemma3_12b")]


@pytest.mark.parametrize("family, attr", ENCODERS, ids=[f"{f}-{a}" for f, a in ENCODERS])
def test_every_spelling_converts_to_comfyuis_name(family, attr):
    encoder = next(e for e in FAMILIES[family].llm_encoders if e.comfy == attr)
    comfy = f"text_encoders.{attr}.transformer.model."
    spellings = {
        "kohya": ("lora_te_", True), "kohya te1": ("lora_te1_", True), "ComfyUI": (comfy, False),
        "ComfyUI alias": ("text_encoders.transformer.model.", False),
        "diffusers": (f"{encoder.diffusers}.{encoder.hf_path}", False),
        "transformers CausalLM": (f"{encoder.diffusers}.model.", False),
        "PEFT on the encoder": ("base_model.model.model.", False),
        "sd-scripts converter": ("text_encoder.qwen3.", False)}
    reference, _, _ = convert_state_dict(_lora(comfy, False, encoder), {}, "comfyui", arch=family)
    assert all(k.startswith(comfy + "layers.3.") for k in reference) and len(reference) == 3 * len(MODULES)
    for what, (prefix, flat) in spellings.items():
        sd = _lora(prefix, flat, encoder)
        out, meta, report = convert_state_dict(sd, {}, "comfyui", arch=family)
        assert not report.unmatched, (what, report.unmatched[:2])
        assert out.keys() == reference.keys() and all(torch.equal(out[k], reference[k]) for k in out), what
        back, bmeta, report = convert_state_dict(out, meta, "diffusers", arch=family)
        assert not report.unmatched and all(k.startswith(f"{encoder.diffusers}.{encoder.hf_path}layers.3.")
                                            for k in back), what
        assert_same_deltas(module_deltas(sd, arch=family), module_deltas(back, bmeta, arch=family))


def test_an_encoder_the_family_does_not_load_is_reported():
    """Gemma 2's shapes on a Flux 2 LoRA: none of Flux 2's encoders; the keys are listed with why, not renamed."""
    sd = _lora("lora_te_", True, FAMILIES["lumina2"].llm_encoders[0], divisor=1)
    _, _, report = convert_state_dict(sd, {}, "comfyui", arch="flux2")
    assert len(report.unmatched) == len(sd) and "none flux2 loads has its width" in report.unmatched[0].reason


def test_wan_umt5_goes_to_the_name_comfyui_maps():
    """ComfyUI maps Wan's UMT5 only as text_encoders.umt5xxl.transformer.<module> (no kohya name)."""
    g = torch.Generator().manual_seed(0)
    sd = {"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.randn(4, 64, generator=g),
          "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.randn(64, 4, generator=g),
          "lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": torch.randn(4, 64, generator=g),
          "lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight": torch.randn(64, 4, generator=g)}
    out, meta, report = convert_state_dict(sd, {}, "comfyui")
    assert report.family == "wan" and not report.unmatched
    assert "text_encoders.umt5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_down.weight" in out
    assert_same_deltas(module_deltas(sd), module_deltas(out, meta))
