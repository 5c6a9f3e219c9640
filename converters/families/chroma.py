"""Chroma (Flux-schnell derived, no per-block modulation; a distilled guidance MLP instead): ComfyUI names
<-> diffusers ChromaTransformer2DModel names."""

from __future__ import annotations

from .flux import BLOCK_LIMITS, DOUBLE_BLOCK, SINGLE_BLOCK
from .rule import Rule

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

__all__ = ["RULES", "BLOCK_LIMITS"]
