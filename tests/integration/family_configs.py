"""Full-size configs of the 2026 families: ComfyUI's unet_config (model_detection's keys; the sizes of the released
models) and the diffusers class with the config of the same model. Both are built on the meta device."""

from __future__ import annotations

_FLUX2 = {"image_model": "flux2", "axes_dim": [32, 32, 32, 32], "mlp_ratio": 3.0, "theta": 2000, "out_channels": 128,
          "global_modulation": True, "mlp_silu_act": True, "qkv_bias": False, "ops_bias": False,
          "default_ref_method": "index", "ref_index_scale": 10.0, "txt_ids_dims": [3], "patch_size": 1,
          "in_channels": 128, "vec_in_dim": None, "yak_mlp": False, "txt_norm": False}
FLUX2_DEV = dict(_FLUX2, hidden_size=6144, num_heads=48, context_in_dim=15360, depth=8, depth_single_blocks=48,
                 guidance_embed=True)
FLUX2_KLEIN_4B = dict(_FLUX2, hidden_size=3072, num_heads=24, context_in_dim=7680, depth=5, depth_single_blocks=20,
                      guidance_embed=False)
FLUX2_KLEIN_9B = dict(_FLUX2, hidden_size=4096, num_heads=32, context_in_dim=12288, depth=8, depth_single_blocks=24,
                      guidance_embed=False)
KREA2 = {"image_model": "krea2", "features": 6144, "channels": 16, "patch": 2, "layers": 28, "heads": 48, "kvheads": 12,
         "txtlayers": 12, "txtdim": 2560}
HIDREAM = {"image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
           "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16,
           "llama_layers": list(range(32)) + [31] * 16, "num_attention_heads": 20, "num_routed_experts": 4,
           "num_activated_experts": 2, "num_layers": 16, "num_single_layers": 32, "out_channels": 16, "patch_size": 2,
           "text_emb_dim": 2048}
KANDINSKY5_LITE = {"image_model": "kandinsky5", "model_dim": 1792, "axes_dims": [16, 24, 24], "time_dim": 512,
                   "ff_dim": 7168, "visual_embed_dim": 132, "num_text_blocks": 2, "num_visual_blocks": 32,
                   "vid_out_norm": True}
_HUNYUAN = {"image_model": "hunyuan_video", "mlp_ratio": 4.0, "theta": 256, "qkv_bias": True, "meanflow": False,
            "meanflow_sum": False, "guidance_embed": False, "vec_in_dim": None, "context_in_dim": 3584, "byt5": True}
HUNYUAN_IMAGE21 = dict(_HUNYUAN, in_channels=64, out_channels=64, patch_size=[1, 1], axes_dim=[64, 64], hidden_size=3584,
                       num_heads=28, depth=20, depth_single_blocks=40, use_cond_type_embedding=False, vision_in_dim=None)
HUNYUAN_VIDEO15 = dict(_HUNYUAN, in_channels=65, out_channels=32, patch_size=[1, 1, 1], axes_dim=[16, 56, 56],
                       hidden_size=2048, num_heads=16, depth=54, depth_single_blocks=0, use_cond_type_embedding=True,
                       vision_in_dim=1152)
LTX2 = {"image_model": "ltxav", "num_layers": 48}
ANIMA = {"image_model": "anima", "max_img_h": 240, "max_img_w": 240, "max_frames": 128, "in_channels": 16,
         "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 2048, "concat_padding_mask": True,
         "crossattn_emb_channels": 1024, "pos_emb_cls": "rope3d", "pos_emb_learnable": True,
         "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30, "use_adaln_lora": True, "adaln_lora_dim": 256,
         "num_blocks": 28, "num_heads": 16, "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
         "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0}
QWEN_IMAGE = {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60}

# family -> (ComfyUI unet_config, {diffusers pipeline component: (class, config)}, ComfyUI reads the diffusers names)
FAMILIES = {
    "flux2 dev": (FLUX2_DEV, {"transformer": ("Flux2Transformer2DModel", {})}, True),
    "flux2 klein 4b": (FLUX2_KLEIN_4B, {"transformer": ("Flux2Transformer2DModel", {
        "num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24, "joint_attention_dim": 7680,
        "guidance_embeds": False})}, True),
    "krea2": (KREA2, {"transformer": ("Krea2Transformer2DModel", {})}, True),
    "hidream": (HIDREAM, {"transformer": ("HiDreamImageTransformer2DModel", {
        "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 16, "num_single_layers": 32,
        "attention_head_dim": 128, "num_attention_heads": 20, "caption_channels": [4096, 4096], "text_emb_dim": 2048,
        "num_routed_experts": 4, "num_activated_experts": 2, "axes_dims_rope": (64, 32, 32),
        "max_resolution": (128, 128), "llama_layers": HIDREAM["llama_layers"]})}, True),
    "kandinsky5": (KANDINSKY5_LITE, {"transformer": ("Kandinsky5Transformer3DModel", {
        "model_dim": 1792, "ff_dim": 7168, "in_visual_dim": 16, "visual_cond": True, "out_visual_dim": 16})}, True),
    "hunyuan_image21": (HUNYUAN_IMAGE21, {"transformer": ("HunyuanImageTransformer2DModel",
                                                          {"text_embed_2_dim": 1472})}, False),
    "hunyuan_video15": (HUNYUAN_VIDEO15, {"transformer": ("HunyuanVideo15Transformer3DModel", {})}, False),
    "ltx2": (LTX2, {"transformer": ("LTX2VideoTransformer3DModel", {})}, False),
    "anima": (ANIMA, {"transformer": ("CosmosTransformer3DModel", {
        "num_attention_heads": 16, "attention_head_dim": 128, "num_layers": 28, "text_embed_dim": 1024,
        "adaln_lora_dim": 256, "extra_pos_embed_type": None}),
        "text_conditioner": ("AnimaTextConditioner", {})}, False),
}
