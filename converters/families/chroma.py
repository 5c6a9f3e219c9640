"""Chroma (Flux-schnell derived, no per-block modulation; a distilled guidance MLP instead): ComfyUI names
<-> diffusers ChromaTransformer2DModel names."""

from __future__ import annotations

from .flux import DOUBLE_BLOCK, RATIOS, SINGLE_BLOCK, WIDTH_FROM
from .rule import Rule
from .sizes import Variant

G = "distilled_guidance_layer."

RULES = DOUBLE_BLOCK + SINGLE_BLOCK + [
    Rule("img_in", ("x_embedder",)),
    Rule("txt_in", ("context_embedder",)),
    Rule("final_layer.linear", ("proj_out",)),
    Rule(G + "in_proj", (G + "in_proj",)),
    Rule(G + "layers.{i}.in_layer", (G + "layers.{i}.linear_1",)),
    Rule(G + "layers.{i}.out_layer", (G + "layers.{i}.linear_2",)),
    Rule(G + "out_proj", (G + "out_proj",)),
]

SIZES = (Variant("chroma", 3072, {"double_blocks": 19, "single_blocks": 38}),)

__all__ = ["RULES", "SIZES", "WIDTH_FROM", "RATIOS"]
