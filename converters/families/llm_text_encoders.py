"""LLM text encoders (Qwen3, Qwen2.5-VL, Qwen3-VL, Gemma 2/3, Llama 3.1, Mistral): the decoder-layer modules a
LoRA trains, how each tool prefixes them, and where ComfyUI and diffusers keep each encoder.

ComfyUI keeps an LLM encoder's decoder under `<attribute>.transformer.model.layers.N` and maps the LoRA base name
`text_encoders.<that path>` on every snapshot that has the encoder; August 2026 also maps kohya's
`lora_te_layers_N_...` when the encoder is the only one the CLIP holds (comfy/lora.py, model_lora_keys_clip).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .rule import Match, Rule, RuleIndex


@dataclass(frozen=True)
class LlmEncoder:
    name: str
    comfy: str  # ComfyUI's attribute for it in the CLIP object
    width: int  # hidden size: input width of q/k/v, gate and up
    mlp: int  # intermediate size: input width of down_proj
    q: int  # q_proj rows (heads x head width)
    kv: int  # k_proj / v_proj rows (key-value heads x head width)
    component: str  # our component name (te1, te4, ...) and, below, diffusers' pipeline component
    diffusers: str
    hf_path: str  # where the decoder layers sit inside that component's transformers model
    january: bool  # ComfyUI 0.8.0 (January 2026) has this encoder class

    def comfy_name(self, name: str) -> str:
        """The base name ComfyUI maps on both snapshots for decoder module `name` (layers.N....)."""
        return f"text_encoders.{self.comfy}.transformer.model.{name}"

    def diffusers_name(self, name: str) -> str:
        return f"{self.diffusers}.{self.hf_path}{name}"


DECODER = "layers.{i}."
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
RULES = [Rule(DECODER + n, (DECODER + n,)) for n in MODULES]
INDEX = RuleIndex(RULES)

# What sits in front of `layers.N` in the names tools write: ComfyUI's paths (with or without the encoder's
# attribute), transformers' model classes (CausalLM: model.; VL / Mistral3 / Gemma3: model.language_model.;
# Qwen3VLModel: language_model.) and sd-scripts' Anima converter (qwen3.).
_WRAPPER = re.compile(r"^(?:[a-z0-9_]+\.transformer\.model\.|transformer\.model\.|model\.language_model\."
                      r"|language_model\.model\.|language_model\.|model\.|qwen3\.)")
_FLAT_WRAPPER = re.compile(r"^(?:model_language_model_|language_model_|model_)")


def match(name: str, flat: bool) -> Match | None:
    """The decoder module a text-encoder module name denotes, whatever wrapper precedes it."""
    return INDEX.match((_FLAT_WRAPPER if flat else _WRAPPER).sub("", name, count=1), flat)


# name, ComfyUI attribute, width, MLP, q rows, k/v rows (ComfyUI 0.33.0's classes), our component, diffusers'
# pipeline component, the decoder's path in it (transformers class the diffusers pipeline loads), January has it
QWEN3_06B = LlmEncoder("Qwen3 0.6B", "qwen3_06b", 1024, 3072, 2048, 1024, "te1", "text_encoder", "", False)
QWEN3_4B = LlmEncoder("Qwen3 4B", "qwen3_4b", 2560, 9728, 4096, 1024, "te1", "text_encoder", "model.", True)
QWEN3_4B_KLEIN = LlmEncoder("Qwen3 4B", "qwen3_4b", 2560, 9728, 4096, 1024, "te1", "text_encoder", "model.", False)
QWEN3_8B = LlmEncoder("Qwen3 8B", "qwen3_8b", 4096, 12288, 4096, 1024, "te1", "text_encoder", "model.", False)
MISTRAL3_24B = LlmEncoder("Mistral Small 3 24B", "mistral3_24b", 5120, 32768, 4096, 1024, "te1", "text_encoder",
                          "model.language_model.", True)
QWEN25_VL_7B = LlmEncoder("Qwen2.5-VL 7B", "qwen25_7b", 3584, 18944, 3584, 512, "te1", "text_encoder",
                          "model.language_model.", True)
QWEN3_VL_4B = LlmEncoder("Qwen3-VL 4B", "qwen3vl_4b", 2560, 9728, 4096, 1024, "te1", "text_encoder", "language_model.",
                         False)
GEMMA2_2B = LlmEncoder("Gemma 2 2B", "gemma2_2b", 2304, 9216, 2048, 1024, "te1", "text_encoder", "", True)
GEMMA3_12B = LlmEncoder("Gemma 3 12B", "gemma3_12b", 3840, 15360, 4096, 2048, "te1", "text_encoder",
                        "model.language_model.", True)
LLAMA31_8B = LlmEncoder("Llama 3.1 8B", "llama", 4096, 14336, 4096, 1024, "te4", "text_encoder_4", "model.", True)
