"""LTX-2 (audio-video): original/ComfyUI names <-> diffusers LTX2VideoTransformer3DModel names. The blocks have the
same names on both sides; the embedders and the adaLN modules are renamed (diffusers'
_convert_non_diffusers_ltx2_lora_to_diffusers). The text connectors (in the diffusion model in ComfyUI since
2026, a pipeline component of their own in diffusers) keep their ComfyUI names; no diffusers name map for them."""

from __future__ import annotations

from .rule import Rule, prefixed, same_name
from .sizes import Variant

_ATTN = ("to_q", "to_k", "to_v", "to_out.0")
_AUDIO_ATTN = ("audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
_EMBED = ("emb.timestep_embedder.linear_1", "emb.timestep_embedder.linear_2", "linear")


def _renamed(original: str, diffusers: str) -> list[Rule]:
    return [Rule(f"{original}.{e}", (f"{diffusers}.{e}",)) for e in _EMBED]


VIDEO = (prefixed("transformer_blocks.{i}.", same_name(*[f"{a}.{p}" for a in ("attn1", "attn2") for p in _ATTN],
                                                       "ff.net.0.proj", "ff.net.2"))
         + same_name("caption_projection.linear_1", "caption_projection.linear_2", "proj_out")
         + [Rule("patchify_proj", ("proj_in",))] + _renamed("adaln_single", "time_embed"))

AUDIO = (prefixed("transformer_blocks.{i}.", same_name(*[f"{a}.{p}" for a in _AUDIO_ATTN for p in _ATTN],
                                                       "audio_ff.net.0.proj", "audio_ff.net.2"))
         + same_name("audio_caption_projection.linear_1", "audio_caption_projection.linear_2", "audio_proj_out")
         + [Rule("audio_patchify_proj", ("audio_proj_in",))] + _renamed("audio_adaln_single", "audio_time_embed")
         + _renamed("av_ca_video_scale_shift_adaln_single", "av_cross_attn_video_scale_shift")
         + _renamed("av_ca_a2v_gate_adaln_single", "av_cross_attn_video_a2v_gate")
         + _renamed("av_ca_audio_scale_shift_adaln_single", "av_cross_attn_audio_scale_shift")
         + _renamed("av_ca_v2a_gate_adaln_single", "av_cross_attn_audio_v2a_gate"))

# ComfyUI-only modules: kept for ComfyUI, reported (not guessed) when written for diffusers
COMFY_ONLY = ("audio_embeddings_connector.", "video_embeddings_connector.")
CONNECTORS = [r for c in COMFY_ONLY for r in prefixed(c + "transformer_1d_blocks.{i}.",
                                                      same_name(*[f"attn1.{p}" for p in _ATTN], "ff.net.0.proj",
                                                                "ff.net.2"))]

RULES = VIDEO + AUDIO + CONNECTORS

SIZES = (Variant("ltx2", 4096, {"transformer_blocks": 48}),)
WIDTH_FROM = r"^transformer_blocks\.\d+\.(attn1\.to_[qkv]|attn2\.to_q|ff\.net\.0\.proj)$"
