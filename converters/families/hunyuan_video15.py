"""HunyuanVideo 1.5: the HunyuanVideo double blocks (54, no single blocks) at width 2048, with a glyph (ByT5) and
an image (vision) projection <-> diffusers HunyuanVideo15Transformer3DModel names. ComfyUI maps only the
diffusion-pipe spellings for it, not the diffusers names."""

from __future__ import annotations

from .flux import RATIOS, WIDTH_FROM
from .hunyuan_video import BLOCKS, FINAL, TEXT_IN
from .rule import Rule
from .sizes import Variant

RULES = BLOCKS + TEXT_IN + FINAL + [
    Rule("time_in.in_layer", ("time_embed.timestep_embedder.linear_1",), also=("time_in.mlp.0",)),
    Rule("time_in.out_layer", ("time_embed.timestep_embedder.linear_2",), also=("time_in.mlp.2",)),
    Rule("byt5_in.fc1", ("context_embedder_2.linear_1",)),
    Rule("byt5_in.fc2", ("context_embedder_2.linear_2",)),
    Rule("byt5_in.fc3", ("context_embedder_2.linear_3",)),
    Rule("vision_in.proj.1", ("image_embedder.linear_1",)),
    Rule("vision_in.proj.3", ("image_embedder.linear_2",)),
]

SIZES = (Variant("hunyuan_video15", 2048, {"double_blocks": 54, "single_blocks": 0}),)

__all__ = ["RULES", "SIZES", "WIDTH_FROM", "RATIOS"]
