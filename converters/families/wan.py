"""Wan 2.1 / 2.2 (T2V and I2V): original names (ComfyUI) <-> diffusers WanTransformer3DModel names."""

from __future__ import annotations

from .rule import Rule
from .sizes import Variant, ratio

B = "blocks.{i}."

RULES = [
    Rule(B + "self_attn.q", (B + "attn1.to_q",)),
    Rule(B + "self_attn.k", (B + "attn1.to_k",)),
    Rule(B + "self_attn.v", (B + "attn1.to_v",)),
    Rule(B + "self_attn.o", (B + "attn1.to_out.0",)),
    Rule(B + "cross_attn.q", (B + "attn2.to_q",)),
    Rule(B + "cross_attn.k", (B + "attn2.to_k",)),
    Rule(B + "cross_attn.v", (B + "attn2.to_v",)),
    Rule(B + "cross_attn.o", (B + "attn2.to_out.0",)),
    Rule(B + "cross_attn.k_img", (B + "attn2.add_k_proj",)),  # I2V only
    Rule(B + "cross_attn.v_img", (B + "attn2.add_v_proj",)),  # I2V only
    Rule(B + "ffn.0", (B + "ffn.net.0.proj",)),
    Rule(B + "ffn.2", (B + "ffn.net.2",)),
    # norms and parameters: only `.diff` deltas exist for these (ComfyUI side)
    Rule(B + "norm3", (B + "norm2",)),
    Rule(B + "self_attn.norm_q", (B + "attn1.norm_q",)),
    Rule(B + "self_attn.norm_k", (B + "attn1.norm_k",)),
    Rule(B + "cross_attn.norm_q", (B + "attn2.norm_q",)),
    Rule(B + "cross_attn.norm_k", (B + "attn2.norm_k",)),
    Rule(B + "cross_attn.norm_k_img", (B + "attn2.norm_added_k",)),
    Rule(B + "modulation", (B + "scale_shift_table",)),
    Rule("head.modulation", ("scale_shift_table",)),
    Rule("patch_embedding", ("patch_embedding",)),
    Rule("text_embedding.0", ("condition_embedder.text_embedder.linear_1",)),
    Rule("text_embedding.2", ("condition_embedder.text_embedder.linear_2",)),
    Rule("time_embedding.0", ("condition_embedder.time_embedder.linear_1",)),
    Rule("time_embedding.2", ("condition_embedder.time_embedder.linear_2",)),
    Rule("time_projection.1", ("condition_embedder.time_proj",)),
    Rule("head.head", ("proj_out",)),
    Rule("img_emb.proj.0", ("condition_embedder.image_embedder.norm1",)),
    Rule("img_emb.proj.1", ("condition_embedder.image_embedder.ff.net.0.proj",)),
    Rule("img_emb.proj.3", ("condition_embedder.image_embedder.ff.net.2",)),
    Rule("img_emb.proj.4", ("condition_embedder.image_embedder.norm2",)),
]

I2V_MARKERS = ("k_img", "v_img", "img_emb", "add_k_proj", "add_v_proj", "image_embedder")
VARIANTS = {1536: "wan_1.3b", 3072: "wan2.2_5b", 5120: "wan_14b"}
# Wan 2.1 and 2.2 share the names (2.2 A14B is two 2.1-14B-shaped experts)
SIZES = (Variant("wan 1.3b", 1536, {"blocks": 30}), Variant("wan2.2 5b", 3072, {"blocks": 30}),
         Variant("wan 14b", 5120, {"blocks": 40}))
WIDTH_FROM = r"(self_attn\.[qkvo]|cross_attn\.q|ffn\.0)$"
RATIOS = ()
