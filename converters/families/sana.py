"""Sana (600M width 1152, 1600M width 2240): NVlabs original names (ComfyUI_ExtraModels) <-> diffusers names."""

from __future__ import annotations

from .rule import Rule
from .sizes import Variant

B = "blocks.{i}."
T = "transformer_blocks.{i}."

RULES = [
    Rule(B + "attn.qkv", (T + "attn1.to_q", T + "attn1.to_k", T + "attn1.to_v"), (1, 1, 1)),
    Rule(B + "attn.proj", (T + "attn1.to_out.0",)),
    Rule(B + "cross_attn.q_linear", (T + "attn2.to_q",)),
    Rule(B + "cross_attn.kv_linear", (T + "attn2.to_k", T + "attn2.to_v"), (1, 1)),
    Rule(B + "cross_attn.proj", (T + "attn2.to_out.0",)),
    Rule(B + "mlp.inverted_conv.conv", (T + "ff.conv_inverted",)),
    Rule(B + "mlp.depth_conv.conv", (T + "ff.conv_depth",)),
    Rule(B + "mlp.point_conv.conv", (T + "ff.conv_point",)),
    Rule("x_embedder.proj", ("patch_embed.proj",)),
    Rule("t_embedder.mlp.0", ("time_embed.emb.timestep_embedder.linear_1",)),
    Rule("t_embedder.mlp.2", ("time_embed.emb.timestep_embedder.linear_2",)),
    Rule("t_block.1", ("time_embed.linear",)),
    Rule("y_embedder.y_proj.fc1", ("caption_projection.linear_1",)),
    Rule("y_embedder.y_proj.fc2", ("caption_projection.linear_2",)),
    Rule("final_layer.linear", ("proj_out",)),
]

# hidden width -> variant name (inferred from shapes)
VARIANTS = {1152: "sana_600m", 2240: "sana_1600m"}
SIZES = (Variant("sana 600m", 1152, {"blocks": 28}), Variant("sana 1600m", 2240, {"blocks": 20}))
WIDTH_FROM = r"(attn\.qkv|attn\.proj|cross_attn\.q_linear)$"
