"""Anima (Cosmos-Predict2 DiT with an LLM adapter): original/ComfyUI names <-> diffusers names.

The DiT is diffusers' CosmosTransformer3DModel (component `transformer`); the LLM adapter (`llm_adapter.` in the
original) is its own pipeline component in diffusers, `text_conditioner`, with the same inner names. Every rule is
a rename (diffusers' converter moves no rows).
"""

from __future__ import annotations

from .rule import Rule, prefixed, same_name
from .sizes import Variant, ratio

B = "blocks.{i}."
T = "transformer_blocks.{i}."
# Pipeline components besides the transformer that hold some of this family's modules (diffusers names).
COMPONENTS = ("text_conditioner",)

_ATTN = (("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"), ("output_proj", "to_out.0"))
_ADALN = (("self_attn", "norm1"), ("cross_attn", "norm2"), ("mlp", "norm3"))

BLOCK = ([Rule(f"self_attn.{o}", (f"attn1.{d}",)) for o, d in _ATTN]
         + [Rule(f"cross_attn.{o}", (f"attn2.{d}",)) for o, d in _ATTN]
         + [Rule("mlp.layer1", ("ff.net.0.proj",)), Rule("mlp.layer2", ("ff.net.2",))]
         + [Rule(f"adaln_modulation_{o}.{k}", (f"{d}.linear_{k}",)) for o, d in _ADALN for k in (1, 2)])

ADAPTER = same_name(*[f"blocks.{{i}}.{a}.{p}_proj" for a in ("self_attn", "cross_attn") for p in "qkvo"],
                    "blocks.{i}.mlp.0", "blocks.{i}.mlp.2", "out_proj")

RULES = prefixed(B, BLOCK, T) + prefixed("llm_adapter.", ADAPTER, "text_conditioner.") + [
    Rule("x_embedder.proj.1", ("patch_embed.proj",)),
    Rule("t_embedder.1.linear_1", ("time_embed.t_embedder.linear_1",)),
    Rule("t_embedder.1.linear_2", ("time_embed.t_embedder.linear_2",)),
    Rule("final_layer.linear", ("proj_out",)),
    Rule("final_layer.adaln_modulation.1", ("norm_out.linear_1",)),
    Rule("final_layer.adaln_modulation.2", ("norm_out.linear_2",)),
]

SIZES = (Variant("anima", 2048, {"blocks": 28}),)
WIDTH_FROM = r"^blocks\.\d+\.(self_attn\.[qkv]_proj|cross_attn\.q_proj|mlp\.layer1)$"
RATIOS = (ratio(r"^blocks\.\d+\.mlp\.layer1$", "MLP 4x the width", 4),)
