"""Flux 2 (dev, Klein 4B / 9B): BFL/ComfyUI names <-> diffusers Flux2Transformer2DModel names.

The blocks keep Flux.1's original names, but the model has no per-block modulation (three shared modulation
layers instead), a SwiGLU MLP (3x wide, so its input layer has 6x rows) and a single-block linear1 that is one
fused module on both sides (diffusers attn.to_qkv_mlp_proj).
"""

from __future__ import annotations

from .flux import always
from .rule import Rule
from .sizes import Variant, ratio

D = "double_blocks.{i}."
T = "transformer_blocks.{i}."
S = "single_blocks.{i}."
ST = "single_transformer_blocks.{i}."
E = "time_guidance_embed."

RULES = [
    Rule(D + "img_attn.qkv", (T + "attn.to_q", T + "attn.to_k", T + "attn.to_v"), (1, 1, 1)),
    Rule(D + "txt_attn.qkv", (T + "attn.add_q_proj", T + "attn.add_k_proj", T + "attn.add_v_proj"), (1, 1, 1)),
    Rule(D + "img_attn.proj", (T + "attn.to_out.0",)),
    Rule(D + "txt_attn.proj", (T + "attn.to_add_out",)),
    Rule(D + "img_mlp.0", (T + "ff.linear_in",)),
    Rule(D + "img_mlp.2", (T + "ff.linear_out",)),
    Rule(D + "txt_mlp.0", (T + "ff_context.linear_in",)),
    Rule(D + "txt_mlp.2", (T + "ff_context.linear_out",)),
    Rule(S + "linear1", (ST + "attn.to_qkv_mlp_proj",)),
    Rule(S + "linear2", (ST + "attn.to_out",)),
    Rule("double_stream_modulation_img.lin", ("double_stream_modulation_img.linear",)),
    Rule("double_stream_modulation_txt.lin", ("double_stream_modulation_txt.linear",)),
    Rule("single_stream_modulation.lin", ("single_stream_modulation.linear",)),
    Rule("img_in", ("x_embedder",)),
    Rule("txt_in", ("context_embedder",)),
    Rule("time_in.in_layer", (E + "timestep_embedder.linear_1",)),
    Rule("time_in.out_layer", (E + "timestep_embedder.linear_2",)),
    Rule("guidance_in.in_layer", (E + "guidance_embedder.linear_1",)),
    Rule("guidance_in.out_layer", (E + "guidance_embedder.linear_2",)),
    Rule("final_layer.linear", ("proj_out",)),
    # AdaLayerNormContinuous, as in Flux.1: original rows (shift, scale), diffusers rows (scale, shift)
    Rule("final_layer.adaLN_modulation.1", ("norm_out.linear",), swap=always),
]

SIZES = (Variant("flux2 dev", 6144, {"double_blocks": 8, "single_blocks": 48}),
         Variant("flux2 klein 4b", 3072, {"double_blocks": 5, "single_blocks": 20}),
         Variant("flux2 klein 9b", 4096, {"double_blocks": 8, "single_blocks": 24}))
WIDTH_FROM = r"(_attn\.qkv|_attn\.proj|_mlp\.0|linear1)$"
RATIOS = (ratio(r"_mlp\.0$", "SwiGLU MLP input 6x the width", 6), ratio(r"_mlp\.2$", "MLP output from 3x the width", "1/3"),
          ratio(r"\.linear1$", "linear1 = q, k, v and a 6x MLP input", 9), ratio(r"\.linear2$", "linear2 from 4x the width", "1/4"))
