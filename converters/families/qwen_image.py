"""Qwen-Image (and Qwen-Image-Edit): ComfyUI uses the diffusers module names, so every rule is an identity.

Listed so the family is recognised from its keys and its LoRAs get the kohya form ComfyUI maps.
"""

from __future__ import annotations

from .rule import prefixed, same_name
from .sizes import Variant, ratio

BLOCK = same_name("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out", "img_mod.1", "txt_mod.1", "img_mlp.net.0.proj",
                  "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2")

RULES = prefixed("transformer_blocks.{i}.", BLOCK) + same_name(
    "img_in", "txt_in", "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
    "norm_out.linear", "proj_out")

SIZES = (Variant("qwen_image", 3072, {"transformer_blocks": 60}),)
WIDTH_FROM = r"(attn\.to_[qkv]|attn\.add_[qkv]_proj|attn\.to_out\.0|attn\.to_add_out|_mlp\.net\.0\.proj|_mod\.1)$"
RATIOS = (ratio(r"_mlp\.net\.0\.proj$", "MLP 4x the width", 4),)
