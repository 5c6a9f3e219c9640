"""Which layers get a LoRA: presets by role (attention / MLP) and custom patterns.

Presets recognise both diffusers names and ComfyUI/original names of every supported family:
  SD1.5/SDXL  diffusers ...attentions.N.transformer_blocks.M.attn1.to_q    SGM ...transformer_blocks.M.attn2.to_k
  Flux        double_blocks.N.img_attn.qkv/proj, txt_attn.*, img_mlp.0/2, single_blocks.N.linear1/linear2
  SD3         joint_blocks.N.x_block.attn.qkv/proj, context_block.attn.*, mlp.fc1/fc2
  Wan         blocks.N.self_attn.q/k/v/o, cross_attn.q/k/v/o/k_img/v_img, ffn.0/ffn.2
  Sana        blocks.N.attn.qkv/proj, cross_attn.q_linear/kv_linear/proj, mlp.inverted_conv/point_conv
Presets only ever pick layers inside the repeated blocks, and never embeddings, norms, (ada)modulation,
or the model's input/output layers: those are shared by everything the model draws and a LoRA there
mostly shifts colours/scale instead of learning the concept.
"""

from __future__ import annotations

import difflib
import fnmatch
import re

from torch import nn

from .base import is_adaptable
from ..errors import TrainingError
from .layer_kinds import is_linear

_ATTENTION = [
    r"(^|\.)(attn|attn1|attn2|self_attn|cross_attn|img_attn|txt_attn|attention)\."
    r"(to_q|to_k|to_v|to_qkv|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out|"
    r"qkv|proj|q|k|v|o|k_img|v_img|q_linear|kv_linear)$",
    r"(^|\.)single_blocks\.\d+\.(linear1|linear2)$",  # Flux original: fused qkv+mlp_in / attn_out+mlp_out
    r"(^|\.)single_transformer_blocks\.\d+\.proj_out$",  # diffusers Flux: same fused output as linear2
]
_MLP = [
    r"(^|\.)(ff|ff_context|ffn)\.net\.(0\.proj|2)$",  # diffusers FeedForward, SGM FeedForward
    r"(^|\.)(img_mlp|txt_mlp|ffn)\.(0|2)$",  # Flux original, Wan original
    r"(^|\.)mlp\.(fc1|fc2|w1|w2|w3|0|2)$",  # SD3 Mlp / SwiGLU, Sequential MLPs
    r"(^|\.)proj_mlp$",  # diffusers Flux single blocks
    r"(^|\.)mlp\.(inverted_conv|point_conv)\.conv$",  # Sana original (1x1 convs; depth_conv is grouped)
    r"(^|\.)ff\.(conv_inverted|conv_point)$",  # diffusers Sana GLUMBConv
]
_TEXT_ENCODER = [
    r"(^|\.)self_attn\.(q_proj|k_proj|v_proj|out_proj)$",  # CLIP (HF and ComfyUI names)
    r"(^|\.)mlp\.(fc1|fc2)$",
    r"(^|\.)(SelfAttention|EncDecAttention)\.(q|k|v|o)$",  # T5
    r"(^|\.)DenseReluDense\.(wi|wi_0|wi_1|wo)$",
]
_IN_BLOCK = re.compile(r"(^|\.)([A-Za-z_]*blocks?|layers)\.\d+\.|(^|\.)mid_block\.")
_EXCLUDED_PART = re.compile(r"norm|emb|^(img_mod|txt_mod|mod|modulation|adaLN_modulation|t_block)$")
_IO_LAYER = re.compile(r"(^|\.)input_blocks\.0\.0$")  # SGM UNet conv_in sits inside input_blocks

PRESETS: dict[str, str] = {
    "attention": "q/k/v/out projections of every attention (Flux single blocks: linear1/linear2)",
    "attention_mlp": "attention + feed-forward/MLP layers",
    "all_linear": "every Linear inside the transformer/UNet blocks",
    "all_linear_conv": "every Linear and ungrouped Conv inside the blocks (LoCon)",
    "text_encoder": "attention and MLP linears of CLIP / T5 text encoders (kohya's text-encoder LoRA)",
}


def target_items(spec: str | list[str]) -> list[str]:
    """The presets and patterns of a target spec, checked without a model: not empty, every regex valid, and no
    word that is a preset misspelt (as a plain name it would only match a layer of that name)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if not items:
        raise TrainingError("no LoRA targets given (empty target spec)")
    for item in items:
        if _is_regex(item):
            try:
                re.compile(item.removeprefix("re:"))
            except re.error as e:
                raise TrainingError(f"bad target regex {item!r}: {e}") from None
        elif item not in PRESETS and _WORD.fullmatch(item):
            near = difflib.get_close_matches(item, list(PRESETS), n=1, cutoff=0.8)
            if near:
                raise TrainingError(f"target {item!r} is not a preset; did you mean {near[0]!r}? "
                                    f"Presets: {', '.join(PRESETS)}")
    return items


def select_targets(root: nn.Module, spec: str | list[str]) -> list[str]:
    """Module names (in root.named_modules order) to put a LoRA on. `spec` is a preset name, or
    comma-separated / listed patterns (regex, glob, or a plain name/suffix); presets may be mixed in."""
    items = target_items(spec)
    chosen: list[str] = []
    for name, module in root.named_modules():
        if name and is_adaptable(module) and any(_matches(item, name, module) for item in items):
            chosen.append(name)
    if not chosen:
        raise TrainingError(f"target spec {spec!r} matches no Linear/Conv layer of {type(root).__name__}")
    return chosen


def _matches(item: str, name: str, module: nn.Module) -> bool:
    if item in PRESETS:
        return _in_preset(item, name, module)
    return _pattern_matches(item, name)


def _in_preset(preset: str, name: str, module: nn.Module) -> bool:
    if not _IN_BLOCK.search(name) or _IO_LAYER.search(name):
        return False
    if any(_EXCLUDED_PART.search(part) for part in name.split(".")):
        return False
    if preset == "all_linear":
        return is_linear(module)
    if preset == "all_linear_conv":
        return True
    if preset == "text_encoder":
        return any(re.search(p, name) for p in _TEXT_ENCODER)
    patterns = _ATTENTION + (_MLP if preset == "attention_mlp" else [])
    return any(re.search(p, name) for p in patterns)


_REGEX_CHARS = re.compile(r"[\\^$()+{}|]|\.\*|\.\+")
_WORD = re.compile(r"[A-Za-z_]+")


def _is_regex(pattern: str) -> bool:
    return pattern.startswith("re:") or _REGEX_CHARS.search(pattern) is not None


def _pattern_matches(pattern: str, name: str) -> bool:
    """Regex (re.search) if it uses regex syntax; glob if it has * ? [; else exact name or dotted suffix.
    (target_items has compiled every regex.)"""
    if _is_regex(pattern):
        return re.search(pattern.removeprefix("re:"), name) is not None
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)
    return name == pattern or name.endswith("." + pattern)
