"""Kandinsky 5 (Lite / Pro video, Image): ComfyUI's port uses the diffusers module names, so every rule is an
identity. Listed so the family is recognised from its keys and its LoRAs get the kohya form ComfyUI maps."""

from __future__ import annotations

from .rule import prefixed, same_name
from .sizes import Variant

_ATTN = ("to_query", "to_key", "to_value", "out_layer")
_FF = ("feed_forward.in_layer", "feed_forward.out_layer")

RULES = (prefixed("visual_transformer_blocks.{i}.", same_name(
    *[f"self_attention.{a}" for a in _ATTN], *[f"cross_attention.{a}" for a in _ATTN], *_FF,
    "visual_modulation.out_layer"))
    + prefixed("text_transformer_blocks.{i}.", same_name(*[f"self_attention.{a}" for a in _ATTN], *_FF,
                                                         "text_modulation.out_layer"))
    + same_name("time_embeddings.in_layer", "time_embeddings.out_layer", "text_embeddings.in_layer",
                "pooled_text_embeddings.in_layer", "visual_embeddings.in_layer", "out_layer.modulation.out_layer",
                "out_layer.out_layer"))

# Pro has more and wider blocks (sizes not listed here): depth is no evidence for this family
SIZES = (Variant("kandinsky5 lite", 1792), Variant("kandinsky5 image", 2560))
WIDTH_FROM = r"(self_attention\.to_(query|key|value)|cross_attention\.to_query|feed_forward\.in_layer)$"
