"""Split a LoRA tensor key into (prefix style, component, module name, role), for every format in circulation."""

from __future__ import annotations

import re
from dataclasses import dataclass

# (prefix, style, component, flat). Longest prefixes first; "flat" names use '_' for '.' (kohya family).
PREFIXES = (
    ("lora_unet__", "kohya", "model", True),  # Wan-Fun reward LoRAs
    ("lora_unet_", "kohya", "model", True),
    ("lora_transformer_", "onetrainer", "model", True),
    ("Hunyuan_video_I2V_lora_", "tencent I2V", "model", True),  # Tencent's HunyuanVideo-I2V trainer
    ("lycoris_", "simpletuner_lycoris", "model", True),
    ("lora_te1_", "kohya", "te1", True),
    ("lora_te2_", "kohya", "te2", True),
    ("lora_te3_", "kohya", "te3", True),
    ("lora_te_", "kohya", "te1", True),
    ("text_encoders.clip_l.transformer.", "comfyui", "te1", False),
    ("text_encoders.clip_g.transformer.", "comfyui", "te2", False),
    ("text_encoders.t5xxl.transformer.", "comfyui", "te3", False),
    ("text_encoders.", "comfyui", "te1", False),  # an LLM encoder: text_encoders.<attribute>.transformer.model.
    ("lora_te4_", "kohya", "te4", True),
    ("model.diffusion_model.", "comfyui", "model", False),
    ("diffusion_model.", "comfyui", "model", False),
    ("unet.base_model.model.", "peft", "model", False),
    ("base_model.model.", "peft", "model", False),
    ("transformer.", "diffusers", "model", False),
    ("unet.", "diffusers", "model", False),
    ("text_encoder_2.", "diffusers", "te2", False),
    ("text_encoder_3.", "diffusers", "te3", False),
    ("text_encoder_4.", "diffusers", "te4", False),  # HiDream's Llama
    ("text_encoder.", "diffusers", "te1", False),
)

# Pipeline components besides the transformer that hold denoiser modules: the name keeps them (Anima's LLM adapter).
OWN_COMPONENTS = ("text_conditioner.",)
# PEFT keys of an LLM text encoder saved on its own (base_model.model.model.layers.N...)
_PEFT_LLM = re.compile(r"^(model\.)?(language_model\.)?layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.")

# (suffix, role). Checked in order: more specific suffixes first.
SUFFIXES = (
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_magnitude_vector.default.weight", "magnitude"), (".lora_magnitude_vector.weight", "magnitude"),
    (".lora_magnitude_vector", "magnitude"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_mid.weight", "mid"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_B.bias", "bias"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),  # old diffusers attn procs: processor.to_q_lora
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".alpha", "alpha"), (".dora_scale", "dora_scale"),
    (".hada_w1_a", "hada_w1_a"), (".hada_w1_b", "hada_w1_b"), (".hada_w2_a", "hada_w2_a"), (".hada_w2_b", "hada_w2_b"),
    (".hada_t1", "hada_t1"), (".hada_t2", "hada_t2"),
    (".lokr_w1_a", "lokr_w1_a"), (".lokr_w1_b", "lokr_w1_b"), (".lokr_w2_a", "lokr_w2_a"), (".lokr_w2_b", "lokr_w2_b"),
    (".lokr_w1", "lokr_w1"), (".lokr_w2", "lokr_w2"), (".lokr_t2", "lokr_t2"),
    (".diff_b", "diff_b"), (".diff_m", "diff_m"), (".diff", "diff"),
)

# XLabs Flux: double_blocks.N.processor.{qkv,proj}_lora{1,2}.{down,up}.weight, single_blocks.N.processor.*_lora.*
_XLABS = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.processor\.(qkv|proj)_lora([12]?)\.(down|up)\.weight$")
_XLABS_NAMES = {("double_blocks", "qkv", "1"): "img_attn.qkv", ("double_blocks", "qkv", "2"): "txt_attn.qkv",
                ("double_blocks", "proj", "1"): "img_attn.proj", ("double_blocks", "proj", "2"): "txt_attn.proj",
                ("single_blocks", "qkv", ""): "linear1", ("single_blocks", "proj", ""): "linear2"}


@dataclass(frozen=True)
class ParsedKey:
    key: str
    style: str
    component: str
    module: str  # module path (dotted, or flat for kohya-style prefixes)
    role: str
    flat: bool


def _clean(module: str) -> str:
    """Old diffusers spellings: 'attn1.processor.to_q' -> 'attn1.to_q', 'to_out' -> 'to_out.0', linear1_qkv."""
    module = module.replace(".processor.", ".")
    if module.endswith(".to_out"):
        module += ".0"
    if module.endswith(".linear1_qkv"):
        module = module[: -len("_qkv")]
    return module


def parse_key(key: str) -> ParsedKey | None:
    """None when the key is not an adapter tensor (e.g. a full model weight)."""
    m = _XLABS.match(key)
    if m:
        block, n, what, which, du = m.groups()
        name = _XLABS_NAMES.get((block, what, which))
        if name:
            return ParsedKey(key, "xlabs", "model", f"{block}.{n}.{name}", "down" if du == "down" else "up", False)
    style, component, flat, rest = "bare", "model", False, key
    if key.startswith(OWN_COMPONENTS):
        style = "diffusers"
    else:
        for prefix, p_style, p_component, p_flat in PREFIXES:
            if key.startswith(prefix):
                style, component, flat, rest = p_style, p_component, p_flat, key[len(prefix):]
                break
    if style == "peft" and (rest.startswith("text_model.") or _PEFT_LLM.match(rest)):
        component = "te1"
    for suffix, role in SUFFIXES:
        if rest.endswith(suffix):
            module = rest[: -len(suffix)]
            if role == "diff_m":  # lightx2v: a block's modulation parameter delta
                module, role = module + ("_modulation" if flat else ".modulation"), "diff"
            if not module:
                return None
            return ParsedKey(key, style, component, module if flat else _clean(module), role, flat)
    return None
