"""Krea 2 (single-stream MMDiT with a text-fusion stack): Krea/ComfyUI names (blocks.N.attn.wq, mlp.gate) <->
diffusers Krea2Transformer2DModel names (transformer_blocks.N.attn.to_q, ff.gate). One module per module: no
fused layers, no reordered rows."""

from __future__ import annotations

from .rule import Rule
from .sizes import Variant, ratio

_BLOCK = (("attn.wq", "attn.to_q"), ("attn.wk", "attn.to_k"), ("attn.wv", "attn.to_v"), ("attn.gate", "attn.to_gate"),
          ("attn.wo", "attn.to_out.0"), ("mlp.gate", "ff.gate"), ("mlp.up", "ff.up"), ("mlp.down", "ff.down"),
          ("attn.wo", "attn.to_out"))  # a spelling some tools write; read only (the first rule of wo writes to_out.0)


def _blocks(original: str, diffusers: str) -> list[Rule]:
    return [Rule(original + o, (diffusers + d,)) for o, d in _BLOCK]


RULES = (_blocks("blocks.{i}.", "transformer_blocks.{i}.")
         + _blocks("txtfusion.layerwise_blocks.{i}.", "text_fusion.layerwise_blocks.{i}.")
         + _blocks("txtfusion.refiner_blocks.{i}.", "text_fusion.refiner_blocks.{i}.") + [
             Rule("first", ("img_in",)),
             Rule("tmlp.0", ("time_embed.linear_1",)),
             Rule("tmlp.2", ("time_embed.linear_2",)),
             Rule("tproj.1", ("time_mod_proj",)),
             Rule("txtmlp.1", ("txt_in.linear_1",)),
             Rule("txtmlp.3", ("txt_in.linear_2",)),
             Rule("last.linear", ("final_layer.linear",)),
             Rule("txtfusion.projector", ("text_fusion.projector",)),  # mixes the 12 tapped encoder layers
         ])

SIZES = (Variant("krea2", 6144, {"blocks": 28}),)
WIDTH_FROM = r"^blocks\.\d+\.(attn\.w[qkv]|attn\.gate|mlp\.gate|mlp\.up)$"
RATIOS = (ratio(r"^blocks\.\d+\.attn\.w[kv]$", "grouped-query k/v (1/4 of the width)", "1/4"),)
