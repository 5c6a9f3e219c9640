"""SD3 / SD3.5 MMDiT: original names (joint_blocks, fused qkv) <-> diffusers SD3Transformer2DModel names."""

from __future__ import annotations

from .rule import Rule
from .sizes import Variant, ratio


def _always(out_rows: int, in_features: int) -> bool:
    return True


def _pre_only_context(out_rows: int, in_features: int) -> bool:
    # The last joint block's context adaLN has only (shift, scale): it is an AdaLayerNormContinuous in diffusers.
    return out_rows == 2 * in_features


J = "joint_blocks.{i}."
T = "transformer_blocks.{i}."

RULES = [
    Rule(J + "x_block.attn.qkv", (T + "attn.to_q", T + "attn.to_k", T + "attn.to_v"), (1, 1, 1)),
    Rule(J + "context_block.attn.qkv", (T + "attn.add_q_proj", T + "attn.add_k_proj", T + "attn.add_v_proj"), (1, 1, 1)),
    Rule(J + "x_block.attn2.qkv", (T + "attn2.to_q", T + "attn2.to_k", T + "attn2.to_v"), (1, 1, 1)),
    Rule(J + "x_block.attn.proj", (T + "attn.to_out.0",)),
    Rule(J + "x_block.attn2.proj", (T + "attn2.to_out.0",)),
    Rule(J + "context_block.attn.proj", (T + "attn.to_add_out",)),
    Rule(J + "x_block.mlp.fc1", (T + "ff.net.0.proj",)),
    Rule(J + "x_block.mlp.fc2", (T + "ff.net.2",)),
    Rule(J + "context_block.mlp.fc1", (T + "ff_context.net.0.proj",)),
    Rule(J + "context_block.mlp.fc2", (T + "ff_context.net.2",)),
    Rule(J + "x_block.adaLN_modulation.1", (T + "norm1.linear",)),
    Rule(J + "context_block.adaLN_modulation.1", (T + "norm1_context.linear",), swap=_pre_only_context),
    Rule("x_embedder.proj", ("pos_embed.proj",)),
    Rule("context_embedder", ("context_embedder",)),
    Rule("t_embedder.mlp.0", ("time_text_embed.timestep_embedder.linear_1",)),
    Rule("t_embedder.mlp.2", ("time_text_embed.timestep_embedder.linear_2",)),
    Rule("y_embedder.mlp.0", ("time_text_embed.text_embedder.linear_1",)),
    Rule("y_embedder.mlp.2", ("time_text_embed.text_embedder.linear_2",)),
    Rule("final_layer.linear", ("proj_out",)),
    Rule("final_layer.adaLN_modulation.1", ("norm_out.linear",), swap=_always),
]

# SD3 medium has 24 joint blocks, SD3.5 large 38: a higher index is another model (e.g. Qwen-Image's 60).
SIZES = (Variant("sd3 medium / sd3.5 medium", 1536, {"joint_blocks": 24}),
         Variant("sd3.5 large", 2432, {"joint_blocks": 38}))
WIDTH_FROM = r"(attn2?\.qkv|attn2?\.proj|mlp\.fc1|adaLN_modulation\.1)$"
RATIOS = (ratio(r"mlp\.fc1$", "MLP 4x the width", 4), ratio(r"mlp\.fc2$", "MLP output from 4x the width", "1/4"))
