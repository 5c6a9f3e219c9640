"""Tiny random diffusers pipeline folders, one per family, for tests and the scaling bench. No downloads.

Each folder is laid out as a real pipeline (model_index.json, scheduler/, vae/, tokenizer*/, text_encoder*/,
unet/ or transformer/) with toy widths and seeded random weights, so `lora-lab train` loads it through the
same code as a real model. Tokenizers are word-level (the `tokenizers` package), built from a small vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("rcircle red circle on a blue background green square yellow triangle white black photo of the "
         "with an small large bright dark shape centered").split()


def _tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]",
                                   model_max_length=77)
    fast.save_pretrained(folder)
    return len(vocab)


def _text_encoder(kind: str, width: int, vocab: int):
    import transformers as tf

    if kind in ("clip", "clip_proj"):
        cfg = tf.CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                num_attention_heads=2, max_position_embeddings=77, projection_dim=width,
                                eos_token_id=2, pad_token_id=0)
        return (tf.CLIPTextModelWithProjection if kind == "clip_proj" else tf.CLIPTextModel)(cfg)
    if kind in ("t5", "umt5"):
        cls_cfg = (tf.UMT5Config, tf.UMT5EncoderModel) if kind == "umt5" else (tf.T5Config, tf.T5EncoderModel)
        return cls_cfg[1](cls_cfg[0](vocab_size=vocab, d_model=width, d_kv=8, d_ff=2 * width, num_layers=1,
                                     num_heads=2, pad_token_id=0, eos_token_id=2))
    if kind == "gemma2":
        return tf.Gemma2Model(tf.Gemma2Config(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width,
                                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                              head_dim=16, pad_token_id=0, eos_token_id=2, bos_token_id=2))
    raise ValueError(kind)


# family -> (denoiser class, its config, [(text encoder kind, width)], scheduler config)
_DDPM = {"_class_name": "DDPMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "num_train_timesteps": 1000, "prediction_type": "epsilon"}
_FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "num_train_timesteps": 1000}
_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
             attention_head_dim=8, norm_num_groups=8)
SPECS = {
    "sd15": ("UNet2DConditionModel", dict(_UNET, cross_attention_dim=32), [("clip", 32)], _DDPM),
    "sdxl": ("UNet2DConditionModel", dict(_UNET, cross_attention_dim=64, addition_embed_type="text_time",
                                          addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8),
             [("clip", 32), ("clip_proj", 32)], _DDPM),
    "sd3": ("SD3Transformer2DModel", dict(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                          num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16,
                                          pooled_projection_dim=64, out_channels=4, pos_embed_max_size=16),
            [("clip_proj", 32), ("clip_proj", 32), ("t5", 64)], _FLOW),
    "flux": ("FluxTransformer2DModel", dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                            pooled_projection_dim=32, axes_dims_rope=(2, 2, 4)),
             [("clip", 32), ("t5", 32)], _FLOW),
    "sana": ("SanaTransformer2DModel", dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                            num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                            cross_attention_dim=16, caption_channels=32, sample_size=8, patch_size=1),
             [("gemma2", 32)], _FLOW),
    "wan": ("WanTransformer3DModel", dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                          out_channels=4, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=1,
                                          rope_max_seq_len=32),
            [("umt5", 32)], dict(_FLOW, shift=5.0)),
}

SPECS["flux_kontext"] = SPECS["flux"]  # Kontext is Flux's transformer; its pipeline class says it takes a reference
# Wan image-to-video: 2.2 I2V A14B (latent, 4 mask and 4 image channels in), 2.1 I2V (also CLIP vision states),
# 2.2 TI2V-5B (WanPipeline's transformer; model_index.json's expand_timesteps says its first frame is kept)
_WAN_I2V = dict(SPECS["wan"][1], in_channels=4 + 4 + 4)
SPECS["wan_i2v"] = ("WanTransformer3DModel", _WAN_I2V, *SPECS["wan"][2:])
SPECS["wan_i2v_clip"] = ("WanTransformer3DModel", dict(_WAN_I2V, image_dim=32, added_kv_proj_dim=16), *SPECS["wan"][2:])
SPECS["wan_ti2v"] = SPECS["wan"]
PIPELINE_CLASSES = {"flux_kontext": "FluxKontextPipeline", "wan_i2v": "WanImageToVideoPipeline",
                    "wan_i2v_clip": "WanImageToVideoPipeline", "wan_ti2v": "WanPipeline"}  # model_index.json's class
INDEX_EXTRA = {"wan_ti2v": {"expand_timesteps": True}}


def _vae(family: str):
    import diffusers

    if family.startswith("wan"):  # Wan's own causal 3D VAE at toy width (4 latent channels)
        return diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                          temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                                          latents_std=[1.0] * 4)
    if family == "sana":  # a deep-compression autoencoder, as Sana's pipeline expects (8x here, 32x for real)
        return diffusers.AutoencoderDC(latent_channels=4, attention_head_dim=8, encoder_block_out_channels=(8, 16, 16, 16),
                                       decoder_block_out_channels=(8, 16, 16, 16), encoder_layers_per_block=(1, 1, 1, 1),
                                       decoder_layers_per_block=(1, 1, 1, 1), encoder_qkv_multiscales=((),) * 4,
                                       decoder_qkv_multiscales=((),) * 4, scaling_factor=0.5)
    from lora_lab.lora_core.cli.tiny_models import tiny_vae

    return tiny_vae(0)


def make_tiny_pipeline(folder: str | Path, family: str, seed: int = 0) -> Path:
    """Write a tiny random `family` pipeline to `folder` (created); returns the folder."""
    import diffusers

    folder = Path(folder)
    cls, config, encoders, scheduler = SPECS[family]
    torch.manual_seed(seed)
    component = "unet" if cls == "UNet2DConditionModel" else "transformer"
    getattr(diffusers, cls)(**config).save_pretrained(folder / component)
    _vae(family).save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    for i, (kind, width) in enumerate(encoders):
        suffix = "" if i == 0 else f"_{i + 1}"
        vocab = _tokenizer(folder / f"tokenizer{suffix}")
        _text_encoder(kind, width, vocab).save_pretrained(folder / f"text_encoder{suffix}")
    if config.get("image_dim"):  # Wan 2.1 I2V: a CLIP vision encoder and its processor
        _image_encoder(config["image_dim"], folder)
    name = PIPELINE_CLASSES.get(family, f"tiny-{family}")
    index = {"_class_name": name, component: ["diffusers", cls], **INDEX_EXTRA.get(family, {})}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def _image_encoder(width: int, folder: Path) -> None:
    import transformers as tf

    tf.CLIPVisionModel(tf.CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8)
                       ).save_pretrained(folder / "image_encoder")
    tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "image_processor")
