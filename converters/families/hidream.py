"""HiDream-I1: ComfyUI's port uses the diffusers module names, so every rule is an identity.

Listed so the family is recognised from its keys (double/single stream blocks, mixture-of-experts feed-forward) and
its LoRAs get the kohya form ComfyUI maps."""

from __future__ import annotations

from .rule import prefixed, same_name
from .sizes import Variant

_ATTN = ("to_q", "to_k", "to_v", "to_out")
_FF = ("w1", "w2", "w3")
# ff_i.gate is the router's weight (a parameter, not a Linear): ComfyUI maps it like any weight
_MOE = ([f"ff_i.shared_experts.{w}" for w in _FF] + [f"ff_i.experts.{{j}}.{w}" for w in _FF] + ["ff_i.gate"])
DOUBLE = same_name(*[f"block.attn1.{a}" for a in _ATTN], *[f"block.attn1.{a}_t" for a in _ATTN],
                   *[f"block.{m}" for m in _MOE], *[f"block.ff_t.{w}" for w in _FF], "block.adaLN_modulation.1")
SINGLE = same_name(*[f"block.attn1.{a}" for a in _ATTN], *[f"block.{m}" for m in _MOE], "block.adaLN_modulation.1")

RULES = (prefixed("double_stream_blocks.{i}.", DOUBLE) + prefixed("single_stream_blocks.{i}.", SINGLE) + same_name(
    "t_embedder.timestep_embedder.linear_1", "t_embedder.timestep_embedder.linear_2",
    "p_embedder.pooled_embedder.linear_1", "p_embedder.pooled_embedder.linear_2", "x_embedder.proj",
    "caption_projection.{i}.linear", "final_layer.linear", "final_layer.adaLN_modulation.1"))

SIZES = (Variant("hidream", 2560, {"double_stream_blocks": 16, "single_stream_blocks": 32}),)
WIDTH_FROM = r"attn1\.to_[qkv](_t)?$"
