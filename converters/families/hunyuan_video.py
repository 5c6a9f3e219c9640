"""HunyuanVideo (T2V and I2V): ComfyUI names <-> diffusers HunyuanVideoTransformer3DModel names.

The blocks are Flux's (20 double, 40 single); the text side adds a token refiner with its own fused qkv.
Tencent's trainer and diffusion-pipe spell some names differently (img_attn_qkv, img_mod.linear, mlp.fc1,
time_in.mlp.0, ...): those are read as the same modules.
"""

from __future__ import annotations

from .flux import DOUBLE_BLOCK, RATIOS, SINGLE_BLOCK, WIDTH_FROM, always
from .rule import Rule
from .sizes import Variant

D = "double_blocks.{i}."
T = "transformer_blocks.{i}."
S = "single_blocks.{i}."
ST = "single_transformer_blocks.{i}."
R = "txt_in.individual_token_refiner.blocks.{i}."
RT = "context_embedder.token_refiner.refiner_blocks.{i}."
TE = "context_embedder.time_text_embed."

# Tencent / diffusion-pipe spellings of the block modules
_TENCENT = {D + "img_attn.qkv": D + "img_attn_qkv", D + "txt_attn.qkv": D + "txt_attn_qkv",
            D + "img_attn.proj": D + "img_attn_proj", D + "txt_attn.proj": D + "txt_attn_proj",
            D + "img_mlp.0": D + "img_mlp.fc1", D + "img_mlp.2": D + "img_mlp.fc2",
            D + "txt_mlp.0": D + "txt_mlp.fc1", D + "txt_mlp.2": D + "txt_mlp.fc2"}


def _with_tencent_spelling(rules: list[Rule]) -> list[Rule]:
    return [Rule(r.original, r.parts, r.ratios, r.swap, (_TENCENT[r.original],) if r.original in _TENCENT else ())
            for r in rules]


# The Flux-layout blocks with their modulation: shared by HunyuanImage 2.1 and HunyuanVideo 1.5.
BLOCKS = _with_tencent_spelling(DOUBLE_BLOCK) + SINGLE_BLOCK + [
    Rule(D + "img_mod.lin", (T + "norm1.linear",), also=(D + "img_mod.linear",)),
    Rule(D + "txt_mod.lin", (T + "norm1_context.linear",), also=(D + "txt_mod.linear",)),
    Rule(S + "modulation.lin", (ST + "norm.linear",), also=(S + "modulation.linear",)),
]
# The text side: token refiner and its embedders.
TEXT_IN = [
    Rule(R + "self_attn.qkv", (RT + "attn.to_q", RT + "attn.to_k", RT + "attn.to_v"), (1, 1, 1),
         also=(R + "self_attn_qkv",)),
    Rule(R + "self_attn.proj", (RT + "attn.to_out.0",), also=(R + "self_attn_proj",)),
    Rule(R + "mlp.0", (RT + "ff.net.0.proj",), also=(R + "mlp.fc1",)),
    Rule(R + "mlp.2", (RT + "ff.net.2",), also=(R + "mlp.fc2",)),
    Rule(R + "adaLN_modulation.1", (RT + "norm_out.linear",)),  # (gate_msa, gate_mlp) on both sides
    Rule("txt_in.input_embedder", ("context_embedder.proj_in",)),
    Rule("txt_in.t_embedder.in_layer", (TE + "timestep_embedder.linear_1",), also=("txt_in.t_embedder.mlp.0",)),
    Rule("txt_in.t_embedder.out_layer", (TE + "timestep_embedder.linear_2",), also=("txt_in.t_embedder.mlp.2",)),
    Rule("txt_in.c_embedder.in_layer", (TE + "text_embedder.linear_1",), also=("txt_in.c_embedder.linear_1",)),
    Rule("txt_in.c_embedder.out_layer", (TE + "text_embedder.linear_2",), also=("txt_in.c_embedder.linear_2",)),
]
FINAL = [
    Rule("img_in.proj", ("x_embedder.proj",)),
    Rule("final_layer.linear", ("proj_out",)),
    Rule("final_layer.adaLN_modulation.1", ("norm_out.linear",), swap=always),
]

RULES = BLOCKS + TEXT_IN + [
    Rule("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",), also=("time_in.mlp.0",)),
    Rule("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",), also=("time_in.mlp.2",)),
    Rule("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",)),
    Rule("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",)),
    Rule("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",), also=("guidance_in.mlp.0",)),
    Rule("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",), also=("guidance_in.mlp.2",)),
] + FINAL

SIZES = (Variant("hunyuan_video", 3072, {"double_blocks": 20, "single_blocks": 40}),)
# img_in / x_embedder input channels: 16 for T2V, 33 for I2V (latent concatenation)
I2V_IN_CHANNELS = 33
