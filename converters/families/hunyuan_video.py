"""HunyuanVideo: ComfyUI names only (detected and passed through; no diffusers name map yet)."""

from __future__ import annotations

from .rule import Rule

D = "double_blocks.{i}."
S = "single_blocks.{i}."

# Original names, listed with themselves as their only "part": they are recognised and renamed for ComfyUI,
# but convert_to diffusers reports them (no map to HunyuanVideoTransformer3DModel names is implemented).
RULES = [Rule(n, (n,)) for n in (
    D + "img_attn.qkv", D + "img_attn.proj", D + "img_mlp.0", D + "img_mlp.2", D + "img_mod.lin",
    D + "txt_attn.qkv", D + "txt_attn.proj", D + "txt_mlp.0", D + "txt_mlp.2", D + "txt_mod.lin",
    S + "linear1", S + "linear2", S + "modulation.lin",
    "img_in.proj", "txt_in.input_embedder", "time_in.in_layer", "time_in.out_layer",
    "vector_in.in_layer", "vector_in.out_layer", "guidance_in.in_layer", "guidance_in.out_layer",
    "final_layer.linear", "final_layer.adaLN_modulation.1",
    "txt_in.t_embedder.mlp.0", "txt_in.t_embedder.mlp.2", "txt_in.c_embedder.linear_1", "txt_in.c_embedder.linear_2",
    "txt_in.individual_token_refiner.blocks.{i}.self_attn_qkv",
    "txt_in.individual_token_refiner.blocks.{i}.self_attn_proj",
    "txt_in.individual_token_refiner.blocks.{i}.mlp.fc1",
    "txt_in.individual_token_refiner.blocks.{i}.mlp.fc2",
    "txt_in.individual_token_refiner.blocks.{i}.adaLN_modulation.1",
)]

# Tencent's own trainer / diffusion-pipe spellings -> ComfyUI names (applied on read).
ALIASES = (("_attn_qkv", "_attn.qkv"), ("_attn_proj", "_attn.proj"), ("_mlp.fc1", "_mlp.0"), ("_mlp.fc2", "_mlp.2"),
           ("_mod.linear", "_mod.lin"), ("modulation.linear", "modulation.lin"))
