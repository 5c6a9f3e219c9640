"""Flux.1: BFL/ComfyUI names (double_blocks/single_blocks, fused qkv and linear1) <-> diffusers names."""

from __future__ import annotations

from .rule import Rule
from .sizes import Variant, ratio


def always(out_rows: int, in_features: int) -> bool:
    return True


D = "double_blocks.{i}."
T = "transformer_blocks.{i}."
S = "single_blocks.{i}."
ST = "single_transformer_blocks.{i}."

# Attention and MLP of both block kinds: shared by Flux-derived models (Chroma, HunyuanVideo).
DOUBLE_BLOCK = [
    Rule(D + "img_attn.qkv", (T + "attn.to_q", T + "attn.to_k", T + "attn.to_v"), (1, 1, 1)),
    Rule(D + "txt_attn.qkv", (T + "attn.add_q_proj", T + "attn.add_k_proj", T + "attn.add_v_proj"), (1, 1, 1)),
    Rule(D + "img_attn.proj", (T + "attn.to_out.0",)),
    Rule(D + "txt_attn.proj", (T + "attn.to_add_out",)),
    Rule(D + "img_mlp.0", (T + "ff.net.0.proj",)),
    Rule(D + "img_mlp.2", (T + "ff.net.2",)),
    Rule(D + "txt_mlp.0", (T + "ff_context.net.0.proj",)),
    Rule(D + "txt_mlp.2", (T + "ff_context.net.2",)),
]
# single block: linear1 = [q | k | v | mlp_in (4 * hidden)]
SINGLE_BLOCK = [
    Rule(S + "linear1", (ST + "attn.to_q", ST + "attn.to_k", ST + "attn.to_v", ST + "proj_mlp"), (1, 1, 1, 4)),
    Rule(S + "linear2", (ST + "proj_out",)),
]
MODULATION = [
    Rule(D + "img_mod.lin", (T + "norm1.linear",)),
    Rule(D + "txt_mod.lin", (T + "norm1_context.linear",)),
    Rule(S + "modulation.lin", (ST + "norm.linear",)),
]

RULES = DOUBLE_BLOCK + SINGLE_BLOCK + MODULATION + [
    Rule("img_in", ("x_embedder",)),
    Rule("txt_in", ("context_embedder",)),
    Rule("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",)),
    Rule("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",)),
    Rule("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",)),
    Rule("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",)),
    Rule("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",)),
    Rule("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",)),
    Rule("final_layer.linear", ("proj_out",)),
    # AdaLayerNormContinuous: original rows are (shift, scale), diffusers rows are (scale, shift)
    Rule("final_layer.adaLN_modulation.1", ("norm_out.linear",), swap=always),
]

# Flux-dev / schnell have 19 double and 38 single blocks: a higher index is another model (HunyuanVideo, Qwen).
SIZES = (Variant("flux", 3072, {"double_blocks": 19, "single_blocks": 38}),)
WIDTH_FROM = r"(_attn\.qkv|_attn\.proj|_mlp\.0|linear1|_mod\.lin)$"
# Flux-layout blocks (also Chroma, HunyuanVideo, HunyuanImage 2.1): a 4x GELU MLP; linear1 = q, k, v and that MLP
# (3 rows per width when it covers q, k, v only: XLabs); linear2 reads attention and MLP (5x the width).
RATIOS = (ratio(r"_mlp\.0$", "MLP 4x the width", 4), ratio(r"_mlp\.2$", "MLP output from 4x the width", "1/4"),
          ratio(r"\.linear1$", "linear1 = q, k, v and a 4x MLP", 7, 3), ratio(r"\.linear2$", "linear2 from 5x the width", "1/5"))
