"""Text encoders (CLIP-L, CLIP-G, T5): module names are the same on both sides; only the prefix changes."""

from __future__ import annotations

from .rule import Rule

CLIP = "text_model.encoder.layers.{i}."
T5 = "encoder.block.{i}.layer.{j}."

RULES = [Rule(n, (n,)) for n in (
    CLIP + "self_attn.q_proj", CLIP + "self_attn.k_proj", CLIP + "self_attn.v_proj", CLIP + "self_attn.out_proj",
    CLIP + "mlp.fc1", CLIP + "mlp.fc2", "text_projection",
    T5 + "SelfAttention.q", T5 + "SelfAttention.k", T5 + "SelfAttention.v", T5 + "SelfAttention.o",
    T5 + "DenseReluDense.wi_0", T5 + "DenseReluDense.wi_1", T5 + "DenseReluDense.wo",
)]
