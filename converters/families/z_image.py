"""Z-Image (NextDiT like Lumina 2, width 3840, 30 heads for q, k and v): ComfyUI names (attention.qkv fused)
<-> diffusers ZImageTransformer2DModel names. ComfyUI also maps the diffusers q/k/v names onto slices of qkv."""

from __future__ import annotations

from .rule import Rule, prefixed, same_name
from .sizes import Variant, ratio

BLOCK = [
    Rule("attention.qkv", ("attention.to_q", "attention.to_k", "attention.to_v"), (1, 1, 1)),
    Rule("attention.out", ("attention.to_out.0",)),
] + same_name("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
MODULATION = same_name("adaLN_modulation.0")

RULES = (prefixed("layers.{i}.", BLOCK + MODULATION) + prefixed("noise_refiner.{i}.", BLOCK + MODULATION)
         + prefixed("context_refiner.{i}.", BLOCK) + [
             Rule("x_embedder", ("all_x_embedder.2-1",)),
             Rule("final_layer.linear", ("all_final_layer.2-1.linear",)),
             Rule("final_layer.adaLN_modulation.1", ("all_final_layer.2-1.adaLN_modulation.1",)),
         ] + same_name("t_embedder.mlp.0", "t_embedder.mlp.2", "cap_embedder.1"))

WIDTH = 3840
SIZES = (Variant("z_image", WIDTH, {"layers": 30, "noise_refiner": 2, "context_refiner": 2}),)
WIDTH_FROM = r"(attention\.qkv|attention\.out|feed_forward\.w[13])$"
RATIOS = (ratio(r"attention\.qkv$", "qkv of equal widths (3x)", 3),)
