"""Lumina 2 (NextDiT, width 2304, grouped-query attention: 24 query heads, 8 key/value heads):
ComfyUI names (attention.qkv fused) <-> diffusers Lumina2Transformer2DModel names."""

from __future__ import annotations

from .rule import Rule, prefixed
from .sizes import Variant, ratio

BLOCK = [
    Rule("attention.qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), (3, 1, 1)),  # q 2304 rows, k and v 768 each
    Rule("attention.out", ("attn.to_out.0",)),
    Rule("feed_forward.w1", ("feed_forward.linear_1",)),
    Rule("feed_forward.w2", ("feed_forward.linear_2",)),
    Rule("feed_forward.w3", ("feed_forward.linear_3",)),
]
MODULATION = [Rule("adaLN_modulation.1", ("norm1.linear",))]

RULES = (prefixed("layers.{i}.", BLOCK + MODULATION) + prefixed("noise_refiner.{i}.", BLOCK + MODULATION)
         + prefixed("context_refiner.{i}.", BLOCK) + [
             Rule("x_embedder", ("x_embedder",)),
             Rule("t_embedder.mlp.0", ("time_caption_embed.timestep_embedder.linear_1",)),
             Rule("t_embedder.mlp.2", ("time_caption_embed.timestep_embedder.linear_2",)),
             Rule("cap_embedder.1", ("time_caption_embed.caption_embedder.1",)),
             Rule("final_layer.linear", ("norm_out.linear_2",)),
             Rule("final_layer.adaLN_modulation.1", ("norm_out.linear_1",)),  # a scale only: no row swap
         ])

WIDTH = 2304
SIZES = (Variant("lumina2", WIDTH, {"layers": 26, "noise_refiner": 2, "context_refiner": 2}),)
WIDTH_FROM = r"(attention\.qkv|attention\.out|feed_forward\.w[13])$"
RATIOS = (ratio(r"attention\.qkv$", "grouped-query qkv (5/3 of the width)", "5/3"),)
