"""HunyuanImage 2.1: the HunyuanVideo block layout (ComfyUI names) at width 3584 <-> diffusers
HunyuanImageTransformer2DModel names. ComfyUI maps none of the diffusers names for this model, so a diffusers LoRA
loads only after conversion."""

from __future__ import annotations

from .flux import RATIOS, WIDTH_FROM
from .hunyuan_video import BLOCKS, FINAL, TEXT_IN
from .rule import Rule
from .sizes import Variant

G = "time_guidance_embed."

RULES = BLOCKS + TEXT_IN + FINAL + [
    Rule("time_in.in_layer", (G + "timestep_embedder.linear_1",)),
    Rule("time_in.out_layer", (G + "timestep_embedder.linear_2",)),
    Rule("guidance_in.in_layer", (G + "guidance_embedder.linear_1",)),  # guidance-distilled checkpoint
    Rule("guidance_in.out_layer", (G + "guidance_embedder.linear_2",)),
    Rule("byt5_in.fc1", ("context_embedder_2.linear_1",)),
    Rule("byt5_in.fc2", ("context_embedder_2.linear_2",)),
    Rule("byt5_in.fc3", ("context_embedder_2.linear_3",)),
]

SIZES = (Variant("hunyuan_image21", 3584, {"double_blocks": 20, "single_blocks": 40}),)

__all__ = ["RULES", "SIZES", "WIDTH_FROM", "RATIOS"]
