"""Random-weight models of real architectures, built from ComfyUI's own classes and saved so that
ComfyUI's stock loaders (CheckpointLoaderSimple, UNETLoader, CLIPLoader, VAELoader) load them.

No checkpoint can be downloaded, so every tensor is filled here from a seeded generator:
normal / sqrt(fan_in) for matrices and convolutions, ones for 1-d weights/scales (norms), zeros for biases.
ComfyUI's layers skip their own initialisation, so nothing may be left unfilled.

Build in a child process (``python comfy_models.py build <kind> <out>``): building a model costs several GB
of RAM that the test process should not keep. ``ensure_model(kind, cache_dir)`` does that once per cache
dir, guarded by a file lock, and writes atomically, so parallel sessions share one build. Builds are
deterministic (seeded, every tensor filled in sorted-name order). The default cache dir has one subfolder
per ComfyUI snapshot (``comfyui-<version>[-<git commit>]``, see ``comfyui_build_tag``): each snapshot's
files are built with that snapshot's own classes and never served to another.

Checkpoints are laid out the way CheckpointSave lays them out, through the model config's own
``process_{unet,clip,vae}_state_dict_for_saving`` (the same calls in both snapshots). ``BaseModel.state_dict_for_saving``
itself is not used: its signature changed (January: ``(clip_sd, vae_sd, ...)``; August:
``(unet_sd, clip_sd, vae_sd, ...)``, the UNet state dict now coming from ``ModelPatcher.state_dict_for_saving``),
so the old positional call silently wrote the CLIP weights under ``model.diffusion_model.`` and no UNet.

Kinds (see MODEL_KINDS):
  sd15          full SD1.5 checkpoint (UNet 860M + CLIP-L + VAE), fp16 on disk  -> CheckpointLoaderSimple
  sdxl_small    SDXL-architecture checkpoint (UNet with SDXL's widths, ADM 2816, context 2048, but the
                Segmind-Vega block depths [0,0,1,1,2,2]; full CLIP-L + CLIP-G; SD VAE), fp16
                -> CheckpointLoaderSimple, detected as supported_models.Segmind_Vega (an SDXL subclass,
                model_base.SDXL, SDXL clip/pooled/size conditioning)
  sdxl          same but transformer_depth [0,0,2,2,10,10] (what ComfyUI requires to call it "SDXL");
                output/middle depths reduced to 1 (not checked by detection). ~1.7B UNet params.
  flux_bench    flux_small with 1 double + 4 single blocks (bench/checkpoint_modes.py: enough blocks for a
                checkpointing plan to choose among), bf16 -> UNETLoader
  flux_small    Flux-dev-shaped diffusion model (1 double + 1 single block, hidden 3072 - fixed by
                ComfyUI's num_heads=24 x head dim 128 -, txt_in 768 and vector_in 768 so that a plain
                CLIP-L feeds it), bf16 -> UNETLoader
  sd3_small     SD3 MMDiT with depth 2 (hidden 128), context 4096 / pooled 2048 (what CLIPLoader type
                "sd3" gives from a lone CLIP-L), bf16 -> UNETLoader
  clip_l        standalone CLIP-L text encoder (HF key layout) -> CLIPLoader: type "stable_diffusion" gives
                (1,77,768)+pooled 768 (feeds flux_small), type "sd3" gives (1,77,4096)+pooled 2048 (sd3_small).
                CLIPLoader has no "flux" type; DualCLIPLoader flux needs T5-XXL (4.7B params: not built here)
  wan21_t2v_small  Wan 2.1 T2V DiT (WanModel: 2 blocks, dim 128 = one head of 128, ffn 256, text_dim 4096 -
                what detection assumes -, in/out 16), bf16 -> UNETLoader, detected as WAN21_T2V. Conditioning
                (1, L, 4096) from LoraLabTestConditioning (umT5-XXL is too large to build here)
  wan21_t2v_small_fp8_scaled  the same model in ComfyUI's "fp8_scaled" layout (block weights fp8 + scale_weight,
                a scaled_fp8 marker) -> UNETLoader, loaded with ComfyUI's mixed-precision (quantized) ops
  flux_vae      16-channel KL VAE shaped like Flux's ae.safetensors -> VAELoader
  sd_vae        4-channel SD VAE -> VAELoader
  wan_vae       Wan 2.1 causal 3-D VAE (ComfyUI's WanVAE key layout, z 16, 8x spatial / 4x temporal) with
                base width 32 instead of 96 (VAELoader reads the width from decoder.head.0.gamma), bf16
                -> VAELoader
  qwen_image_small  Qwen-Image MMDiT (QwenImageTransformer2DModel: 1 block; width 24 heads x 128 and text width 3584
                are what detection assumes), bf16 -> UNETLoader, detected as QwenImage (edit models are the same
                class: references come in the conditioning). VAE: wan_vae (Qwen-Image's VAE is Wan 2.1's)
  flux2_small   Flux 2 (1 double + 1 single block, hidden 128 = one head of 128, context 64), bf16 -> UNETLoader.
                August only: January's detection fixes 48 heads (hidden 6144, 2B parameters for one block pair)
  flux2_vae     Flux 2's VAE shape: the KL VAE with 32 latent channels and a batch-norm over 2x2-patched latents
                (128 channels at 16x), bf16 -> VAELoader
  wan21_i2v_small  Wan 2.1 I2V DiT: wan21_t2v_small's shape with model_type "i2v" (image cross-attention and
                img_emb, which detection looks for) and in_dim 36 (16 latent + 4 mask + 16 image channels),
                bf16 -> UNETLoader, detected as WAN21_I2V (Wan 2.2 I2V A14B experts are detected the same way)
  wan22_ti2v_small  Wan 2.2 TI2V-5B DiT: in/out 48 channels (what detection calls WAN22_T2V), otherwise
                wan21_t2v_small's shape, bf16 -> UNETLoader
  wan22_vae     Wan 2.2 VAE (comfy.ldm.wan.vae2_2, z 48, 16x spatial / 4x temporal) at full width: VAELoader
                fixes its width at 160 (705M parameters), bf16 (1.4 GB) -> VAELoader
  wan22_a14b_high_small, wan22_a14b_low_small  the two experts of a Wan 2.2 A14B T2V: wan21_t2v_small's
                architecture (A14B's experts are Wan 2.1 DiTs; detected as WAN21_T2V), each its own seed
Not a file: a small vision-language text encoder (ComfyUI's Qwen3-VL classes, language model cut down through its
model_options config override, which no loader reads from a file) is built in memory by
test_nodes/vision_clip.py, in the test process or in a test server (node LoraLabTestVisionClip).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

SEED = 1234
# Written into every file's metadata; bump when a builder's output changes for the same snapshot: a cached
# file with another value is rebuilt (ensure_model).
BUILDER_VERSION = "3"

SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def sdxl_unet_config(depth: list[int], depth_output: list[int], depth_middle: int) -> dict:
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
        "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": depth,
        "channel_mult": [1, 2, 4], "transformer_depth_middle": depth_middle,
        "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
        "transformer_depth_output": depth_output, "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


SDXL_SMALL_UNET_CONFIG = sdxl_unet_config([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1, 1, 1, 1], 1)
SDXL_UNET_CONFIG = sdxl_unet_config([0, 0, 2, 2, 10, 10], [0, 0, 0, 1, 1, 1, 1, 1, 1], 1)

SD_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}

# Flux: ComfyUI fixes num_heads=24 and axes_dim sum 128, so hidden_size must be 3072; depth,
# single-block depth, txt_in and vector_in widths are read from the weights.
FLUX_SMALL_PARAMS = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
    "context_in_dim": 768, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 1,
    "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2,
    "qkv_bias": True, "guidance_embed": True, "txt_ids_dims": [],
}

# SD3 MMDiT: hidden = 64 * depth, heads = depth; context/pooled widths read from the weights.
SD3_SMALL_DEPTH = 2
SD3_SMALL_PATCHES = 64 * 64  # pos_embed_max_size 64 (latents up to 128x128 pixels... x8: 1024 px)

# Wan 2.1 T2V: num_heads = dim // 128 and text_dim 4096 are fixed by ComfyUI's detection; dim, ffn_dim,
# depth, in/out channels are read from the weights.
WAN21_SMALL_PARAMS = {
    "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 512, "in_dim": 16, "dim": 128, "ffn_dim": 256,
    "freq_dim": 256, "text_dim": 4096, "out_dim": 16, "num_heads": 1, "num_layers": 2, "window_size": (-1, -1),
    "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
}
WAN_VAE_SMALL_DIM = 32
WAN21_I2V_SMALL_PARAMS = dict(WAN21_SMALL_PARAMS, model_type="i2v", in_dim=36)
WAN22_TI2V_SMALL_PARAMS = dict(WAN21_SMALL_PARAMS, in_dim=48, out_dim=48)
WAN22_VAE_CONFIG = {"dim": 160, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                    "temperal_downsample": [False, True, True], "dropout": 0.0}  # what VAELoader builds
WAN_DIT_KINDS = {  # kind -> (WanModel params, seed offset)
    "wan21_i2v_small": (WAN21_I2V_SMALL_PARAMS, 0),
    "wan22_ti2v_small": (WAN22_TI2V_SMALL_PARAMS, 0),
    "wan22_a14b_high_small": (WAN21_SMALL_PARAMS, 10),
    "wan22_a14b_low_small": (WAN21_SMALL_PARAMS, 11),
}

# Flux 2: August's detection reads the width from img_in and takes one head per 128 (January fixes 48 heads).
FLUX2_SMALL_PARAMS = {
    "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None, "context_in_dim": 64,
    "hidden_size": 128, "mlp_ratio": 3.0, "num_heads": 1, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [32, 32, 32, 32], "theta": 2000, "patch_size": 1, "qkv_bias": False, "guidance_embed": True,
    "txt_ids_dims": [3], "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
    "default_ref_method": "index", "ref_index_scale": 10.0,
}

MODEL_KINDS = {
    "sd15": "sd15.safetensors",
    "sdxl_small": "sdxl_small.safetensors",
    "sdxl": "sdxl.safetensors",
    "flux_small": "flux_small.safetensors",
    "flux_bench": "flux_bench.safetensors",
    "sd3_small": "sd3_small.safetensors",
    "clip_l": "clip_l.safetensors",
    "flux_vae": "flux_vae.safetensors",
    "sd_vae": "sd_vae.safetensors",
    "wan21_t2v_small": "wan21_t2v_small.safetensors",
    "wan21_t2v_small_fp8_scaled": "wan21_t2v_small_fp8_scaled.safetensors",
    "wan_vae": "wan_vae.safetensors",
    "flux_dev_fp8": "flux_dev_fp8.safetensors",
    "qwen_image_small": "qwen_image_small.safetensors",
    "flux2_small": "flux2_small.safetensors",
    "flux2_vae": "flux2_vae.safetensors",
    **{kind: f"{kind}.safetensors" for kind in WAN_DIT_KINDS},
    "wan22_vae": "wan22_vae.safetensors",
}
# Which ComfyUI model folder each kind belongs in (see comfy_server.write_extra_model_paths).
MODEL_FOLDER = {
    "sd15": "checkpoints", "sdxl_small": "checkpoints", "sdxl": "checkpoints",
    "flux_small": "diffusion_models", "flux_bench": "diffusion_models", "sd3_small": "diffusion_models",
    "clip_l": "text_encoders", "flux_vae": "vae", "sd_vae": "vae",
    "wan21_t2v_small": "diffusion_models", "wan21_t2v_small_fp8_scaled": "diffusion_models", "wan_vae": "vae",
    "flux_dev_fp8": "diffusion_models",
    "qwen_image_small": "diffusion_models", "flux2_small": "diffusion_models", "flux2_vae": "vae",
    **{kind: "diffusion_models" for kind in WAN_DIT_KINDS}, "wan22_vae": "vae",
}
# Full-size Flux-dev transformer (19 double + 38 single blocks, 12B parameters) for the GPU benchmark only,
# stored in fp8; its text input is CLIP-L wide (768) like flux_small, since no T5-XXL is built here.
FLUX_DEV_PARAMS = dict(FLUX_SMALL_PARAMS, depth=19, depth_single_blocks=38)


# --------------------------------------------------------------------------------------------
# filling

def fill_random_(module, seed: int) -> None:
    """Fill every floating tensor of module deterministically (sorted by name): see module doc."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    with torch.no_grad():
        for name in sorted(tensors):
            t = tensors[name]
            if not t.is_floating_point():
                continue
            if name.endswith("bias"):
                t.zero_()
            elif t.dim() >= 2:
                fan_in = math.prod(t.shape[1:])
                values = torch.randn(t.shape, generator=generator, dtype=torch.float32) / math.sqrt(fan_in)
                t.copy_(values)
            else:
                t.fill_(1.0)


def _cast(state_dict: dict, dtype) -> dict:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}


_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
              "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


def _save(state_dict: dict, path: Path, metadata: dict | None = None) -> None:
    """Atomic save (temp file in the same dir, fsync, rename) of a flat tensor dict, byte-deterministic.

    safetensors' own writer emits the metadata in hash-map order (different bytes on every run), so the file
    is written here with a canonical header: sorted JSON, tensors by descending element size then name (each
    stays aligned), header padded with spaces to 8 bytes - the layout safetensors itself reads.
    """
    import struct

    import torch

    metadata = dict(metadata or {}, lora_lab_builder=BUILDER_VERSION)
    flat = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    order = sorted(flat, key=lambda k: (-flat[k].element_size(), k))
    header: dict = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}}
    offset = 0
    for name in order:
        t = flat[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[str(t.dtype).replace("torch.", "")], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * (-len(head) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(struct.pack("<Q", len(head)) + head)
            for name in order:
                t = flat[name]
                if t.numel():
                    handle.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------------------------
# builders (run inside a process where comfy is importable)

def _filled_unet_model(unet_config: dict, seed: int):
    """A ComfyUI BaseModel for this unet config, its diffusion_model filled (fp32, on CPU)."""
    import comfy.model_detection

    model_config = comfy.model_detection.model_config_from_unet_config(dict(unet_config))
    if model_config is None:
        raise RuntimeError(f"ComfyUI matched no model class for unet config {unet_config}")
    model = model_config.get_model({})
    fill_random_(model.diffusion_model, seed)
    return model


def _sd_vae_state_dict(seed: int, dtype, z_channels: int = 4) -> dict:
    from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine

    ddconfig = dict(SD_VAE_DDCONFIG, z_channels=z_channels)
    if z_channels == 4:
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    else:  # Flux ae.safetensors layout: no quant convs
        vae = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig},
        )
    fill_random_(vae, seed)
    return _cast(vae.state_dict(), dtype)


def build_sd15(path: Path, seed: int = SEED) -> None:
    import torch
    import comfy.sd1_clip

    _build_checkpoint(path, SD15_UNET_CONFIG, comfy.sd1_clip.SD1ClipModel, seed, "sd15")


def build_sdxl(path: Path, unet_config: dict, seed: int = SEED, kind: str = "sdxl") -> None:
    import comfy.sdxl_clip

    _build_checkpoint(path, unet_config, comfy.sdxl_clip.SDXLClipModel, seed, kind)


def _build_checkpoint(path: Path, unet_config: dict, clip_class, seed: int, kind: str) -> None:
    """UNet + text encoder(s) + SD VAE in one fp16 file, keys as ComfyUI's own CheckpointSave writes them."""
    import torch

    clip = clip_class(device="cpu", dtype=torch.float32)
    fill_random_(clip, seed + 1)
    clip_sd = _cast(clip.state_dict(), torch.float16)
    del clip
    vae_sd = _sd_vae_state_dict(seed + 2, torch.float16)
    model = _filled_unet_model(unet_config, seed)
    full = checkpoint_state_dict(model, clip_sd, vae_sd)
    del model
    _save(_cast(full, torch.float16), path, {"lora_lab_test_model": kind, "seed": str(seed)})


def checkpoint_state_dict(model, clip_sd: dict, vae_sd: dict) -> dict:
    """The full checkpoint dict of a BaseModel plus CLIP and VAE state dicts, as CheckpointSave builds it.

    Uses the model config's process_*_state_dict_for_saving (stable across snapshots), not
    BaseModel.state_dict_for_saving, whose positional signature differs between snapshots (module doc).
    """
    config = model.model_config
    full = config.process_unet_state_dict_for_saving(dict(model.diffusion_model.state_dict()))
    for part in (config.process_clip_state_dict_for_saving(dict(clip_sd)),
                 config.process_vae_state_dict_for_saving(dict(vae_sd))):
        clash = set(part) & set(full)
        if clash:
            raise RuntimeError(f"checkpoint parts overlap on {sorted(clash)[:5]}")
        full.update(part)
    return full


def _random_flux_state_dict(flux_params: dict, dtype, seed: int) -> dict:
    """A comfy.ldm.flux Flux of flux_params built in `dtype` and filled by fill_random_, as a state dict.

    Released Flux files (BFL's flux1-dev) name the q/k RMSNorm gains "<..>_norm.scale". January's Flux
    modules do too; August's use comfy.ops RMSNorm ("_norm.weight") and rename .scale -> .weight on load
    (supported_models.Flux.process_unet_state_dict) without a saving counterpart: the keys are the released names.
    """
    import comfy.ldm.flux.model
    import comfy.ops

    params = dict(flux_params)
    params.pop("image_model")
    model = comfy.ldm.flux.model.Flux(operations=comfy.ops.disable_weight_init, device="cpu", dtype=dtype, **params)
    fill_random_(model, seed)
    return {(k[: -len(".weight")] + ".scale" if k.endswith("_norm.weight") else k): v
            for k, v in model.state_dict().items()}


def build_flux_small(path: Path, seed: int = SEED) -> None:
    import torch

    sd = _random_flux_state_dict(FLUX_SMALL_PARAMS, torch.float32, seed)
    _save(_cast(sd, torch.bfloat16), path, {"lora_lab_test_model": "flux_small", "seed": str(seed)})


def build_flux_bench(path: Path, seed: int = SEED) -> None:
    import torch

    params = dict(FLUX_SMALL_PARAMS, depth=1, depth_single_blocks=4)
    sd = _random_flux_state_dict(params, torch.float32, seed)
    _save(_cast(sd, torch.bfloat16), path, {"lora_lab_test_model": "flux_bench", "seed": str(seed)})


def build_flux_dev_fp8(path: Path, seed: int = SEED) -> None:
    """Filled block by block in bf16 (24 GB, not 48 in fp32), written in fp8_e4m3fn (12 GB). GPU bench only."""
    import torch

    sd = _random_flux_state_dict(FLUX_DEV_PARAMS, torch.bfloat16, seed)
    _save({k: (v.to(torch.float8_e4m3fn) if v.dim() >= 2 else v.to(torch.bfloat16)).contiguous() for k, v in sd.items()},
          path, {"lora_lab_test_model": "flux_dev_fp8", "seed": str(seed)})


def build_sd3_small(path: Path, seed: int = SEED) -> None:
    import torch
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.ops

    depth = SD3_SMALL_DEPTH
    model = mmdit.MMDiT(
        input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=depth,
        num_patches=SD3_SMALL_PATCHES, pos_embed_max_size=int(math.sqrt(SD3_SMALL_PATCHES)),
        adm_in_channels=2048, pos_embed_scaling_factor=None,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64 * depth}},
        dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init,
    )
    fill_random_(model, seed)
    _save(_cast(model.state_dict(), torch.bfloat16), path, {"lora_lab_test_model": "sd3_small", "seed": str(seed)})


def build_wan21_t2v_small(path: Path, seed: int = SEED) -> None:
    import torch
    import comfy.ldm.wan.model
    import comfy.ops

    model = comfy.ldm.wan.model.WanModel(operations=comfy.ops.disable_weight_init, device="cpu",
                                         dtype=torch.float32, **WAN21_SMALL_PARAMS)
    fill_random_(model, seed)
    _save(_cast(model.state_dict(), torch.bfloat16), path,
          {"lora_lab_test_model": "wan21_t2v_small", "seed": str(seed)})


def build_wan21_t2v_small_fp8_scaled(path: Path, seed: int = SEED) -> None:
    """wan21_t2v_small in the layout of ComfyUI's "fp8_scaled" releases (e.g. wan2.1_t2v_1.3B_fp8_scaled): every
    2-D weight inside the blocks in float8_e4m3fn with a per-tensor `.scale_weight` (max|W| / 448), a
    `scaled_fp8` marker, the rest bf16. ComfyUI loads it with its mixed-precision (quantized) Linear ops."""
    import torch
    import comfy.ldm.wan.model
    import comfy.ops

    model = comfy.ldm.wan.model.WanModel(operations=comfy.ops.disable_weight_init, device="cpu",
                                         dtype=torch.float32, **WAN21_SMALL_PARAMS)
    fill_random_(model, seed)
    out = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for key, value in model.state_dict().items():
        if key.startswith("blocks.") and key.endswith(".weight") and value.dim() == 2:
            scale = value.abs().max().clamp(min=1e-12) / 448.0
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[key[:-len("weight")] + "scale_weight"] = scale.reshape(1).float()
        else:
            out[key] = value.to(torch.bfloat16) if value.is_floating_point() else value
    _save(out, path, {"lora_lab_test_model": "wan21_t2v_small_fp8_scaled", "seed": str(seed)})


def build_wan_vae(path: Path, seed: int = SEED) -> None:
    """ComfyUI's Wan 2.1 VAE (comfy.ldm.wan.vae.WanVAE) with the config VAELoader builds, at a smaller width."""
    import torch
    import comfy.ldm.wan.vae

    vae = comfy.ldm.wan.vae.WanVAE(dim=WAN_VAE_SMALL_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                   attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    fill_random_(vae, seed + 2)
    _save(_cast(vae.state_dict(), torch.bfloat16), path, {"lora_lab_test_model": "wan_vae", "seed": str(seed)})


def build_qwen_image_small(path: Path, seed: int = SEED) -> None:
    import torch
    import comfy.ldm.qwen_image.model
    import comfy.ops

    model = comfy.ldm.qwen_image.model.QwenImageTransformer2DModel(
        num_layers=1, in_channels=64, out_channels=16, operations=comfy.ops.disable_weight_init, device="cpu",
        dtype=torch.float32)
    fill_random_(model, seed)
    _save(_cast(model.state_dict(), torch.bfloat16), path, {"lora_lab_test_model": "qwen_image_small", "seed": str(seed)})


def build_flux2_small(path: Path, seed: int = SEED) -> None:
    import torch

    sd = _random_flux_state_dict(FLUX2_SMALL_PARAMS, torch.float32, seed)
    _save(_cast(sd, torch.bfloat16), path, {"lora_lab_test_model": "flux2_small", "seed": str(seed)})


def build_flux2_vae(path: Path, seed: int = SEED) -> None:
    """Flux 2's VAE layout (what VAELoader reads): z 32 with quant convs, batch-norm statistics over 2x2 patches
    (VAELoader builds the AutoencoderKL that applies them only when the file has post_quant_conv)."""
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    vae = AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG, z_channels=32, batch_norm_latent=True), embed_dim=32)
    fill_random_(vae, seed + 2)
    _save(_cast(vae.state_dict(), torch.bfloat16), path, {"lora_lab_test_model": "flux2_vae", "seed": str(seed)})
def build_wan_dit(kind: str, path: Path, seed: int = SEED) -> None:
    """One of WAN_DIT_KINDS: ComfyUI's WanModel with that kind's parameters, filled, bf16."""
    import torch
    import comfy.ldm.wan.model
    import comfy.ops

    params, offset = WAN_DIT_KINDS[kind]
    model = comfy.ldm.wan.model.WanModel(operations=comfy.ops.disable_weight_init, device="cpu",
                                         dtype=torch.float32, **params)
    fill_random_(model, seed + offset)
    _save(_cast(model.state_dict(), torch.bfloat16), path, {"lora_lab_test_model": kind, "seed": str(seed + offset)})


def build_wan22_vae(path: Path, seed: int = SEED) -> None:
    """ComfyUI's Wan 2.2 VAE (comfy.ldm.wan.vae2_2.WanVAE) with the config VAELoader builds for it."""
    import torch
    import comfy.ldm.wan.vae2_2

    vae = comfy.ldm.wan.vae2_2.WanVAE(**WAN22_VAE_CONFIG)
    fill_random_(vae, seed + 2)
    state = _cast(vae.state_dict(), torch.bfloat16)
    del vae
    _save(state, path, {"lora_lab_test_model": "wan22_vae", "seed": str(seed)})


def build_clip_l(path: Path, seed: int = SEED) -> None:
    """Standalone CLIP-L in the HF layout (text_model.*) that CLIPLoader detects as clip_l."""
    import torch
    import comfy.sd1_clip

    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
    fill_random_(clip, seed + 1)
    prefix = "clip_l.transformer."
    sd = {k[len(prefix):]: v for k, v in clip.state_dict().items() if k.startswith(prefix)}
    _save(_cast(sd, torch.float16), path, {"lora_lab_test_model": "clip_l", "seed": str(seed)})


def build_vae(path: Path, z_channels: int, seed: int = SEED) -> None:
    import torch

    _save(_sd_vae_state_dict(seed + 2, torch.float32, z_channels), path,
          {"lora_lab_test_model": f"vae{z_channels}", "seed": str(seed)})


def build(kind: str, path: Path, seed: int = SEED) -> None:
    """Build one model kind into path (needs comfy importable: see comfy_env.import_comfy)."""
    if kind == "sd15":
        build_sd15(path, seed)
    elif kind == "sdxl_small":
        build_sdxl(path, SDXL_SMALL_UNET_CONFIG, seed, kind)
    elif kind == "sdxl":
        build_sdxl(path, SDXL_UNET_CONFIG, seed, kind)
    elif kind == "flux_small":
        build_flux_small(path, seed)
    elif kind == "flux_bench":
        build_flux_bench(path, seed)
    elif kind == "sd3_small":
        build_sd3_small(path, seed)
    elif kind == "clip_l":
        build_clip_l(path, seed)
    elif kind == "flux_vae":
        build_vae(path, 16, seed)
    elif kind == "sd_vae":
        build_vae(path, 4, seed)
    elif kind == "wan21_t2v_small":
        build_wan21_t2v_small(path, seed)
    elif kind == "wan21_t2v_small_fp8_scaled":
        build_wan21_t2v_small_fp8_scaled(path, seed)
    elif kind == "wan_vae":
        build_wan_vae(path, seed)
    elif kind == "flux_dev_fp8":
        build_flux_dev_fp8(path, seed)
    elif kind == "qwen_image_small":
        build_qwen_image_small(path, seed)
    elif kind == "flux2_small":
        build_flux2_small(path, seed)
    elif kind == "flux2_vae":
        build_flux2_vae(path, seed)
    elif kind in WAN_DIT_KINDS:
        build_wan_dit(kind, path, seed)
    elif kind == "wan22_vae":
        build_wan22_vae(path, seed)
    else:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")


# --------------------------------------------------------------------------------------------
# cache (callable from any python: builds in a ComfyUI-python child process)

def cache_root() -> Path:
    """$LORA_LAB_TEST_CACHE, else a per-user dir under the system temp dir (shared across sessions)."""
    env = os.environ.get("LORA_LAB_TEST_CACHE")
    if env:
        return Path(env).expanduser()
    import tempfile

    return Path(tempfile.gettempdir()) / f"lora_lab_test_cache_{os.getuid()}"


def comfyui_build_tag(comfy_path: Path | None = None) -> str:
    """A folder name for one ComfyUI snapshot: comfyui-<version>[-<git commit[:12]>].

    The version comes from comfyui_version.py, the commit from the tree's .git when it has one. A tree with
    neither is named by a hash of the files that decide how models are built and detected.
    """
    import hashlib
    import re

    from .comfy_env import comfyui_path

    root = Path(comfy_path) if comfy_path else comfyui_path()
    if root is None:
        raise RuntimeError("no ComfyUI tree (set COMFYUI_PATH)")
    parts = ["comfyui"]
    version_file = root / "comfyui_version.py"
    if version_file.is_file():
        found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", version_file.read_text())
        if found:
            parts.append(found.group(1))
    commit = _git_head(root / ".git")
    if commit:
        parts.append(commit[:12])
    if len(parts) == 1:
        digest = hashlib.sha256()
        for rel in ("comfy/model_detection.py", "comfy/model_base.py", "comfy/supported_models.py", "comfy/sd.py"):
            file = root / rel
            digest.update(file.read_bytes() if file.is_file() else rel.encode())
        parts.append("src" + digest.hexdigest()[:12])
    return "-".join(re.sub(r"[^A-Za-z0-9_.+]", "_", p) for p in parts)


def _git_head(git_dir: Path) -> str | None:
    """The commit a .git dir's HEAD points at, read from its files (no git binary needed)."""
    try:
        if git_dir.is_file():  # worktree: "gitdir: <path>"
            git_dir = Path(git_dir.read_text().split("gitdir:", 1)[1].strip())
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(None, 1)[1]
        ref_file = git_dir / ref
        if ref_file.is_file():
            return ref_file.read_text().strip()
        packed = git_dir / "packed-refs"
        for line in packed.read_text().splitlines() if packed.is_file() else []:
            if line.endswith(" " + ref):
                return line.split()[0]
    except (OSError, IndexError):
        return None
    return None


def default_cache_dir() -> Path:
    """cache_root()/<comfyui_build_tag()>: models built by (and for) the ComfyUI named by COMFYUI_PATH."""
    return cache_root() / comfyui_build_tag()


@contextlib.contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def model_path(kind: str, cache_dir: Path | None = None, seed: int = SEED) -> Path:
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    stem, ext = MODEL_KINDS[kind].rsplit(".", 1)
    name = f"{stem}.{ext}" if seed == SEED else f"{stem}_s{seed}.{ext}"
    return cache_dir / MODEL_FOLDER[kind] / name


def _is_current(path: Path) -> bool:
    """path exists and was written by this BUILDER_VERSION (read from its safetensors header)."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return False
    return header.get("__metadata__", {}).get("lora_lab_builder") == BUILDER_VERSION


def ensure_model(kind: str, cache_dir: Path | None = None, seed: int = SEED, timeout: float = 1800) -> Path:
    """Path of the cached model of this kind, building it first (in a child process) if missing."""
    from .comfy_env import comfy_python, comfyui_path, why_unavailable

    path = model_path(kind, cache_dir, seed)
    if _is_current(path):
        return path
    reason = why_unavailable()
    if reason:
        raise RuntimeError(reason)
    with _locked(path.parent / f".{path.name}.lock"):
        if _is_current(path):
            return path
        started = time.monotonic()
        env = dict(os.environ, COMFYUI_PATH=str(comfyui_path()))
        proc = subprocess.run(
            [comfy_python(), str(Path(__file__).resolve()), "build", kind, str(path), "--seed", str(seed)],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0 or not path.exists():
            raise RuntimeError(f"building test model {kind!r} into {path} failed (rc={proc.returncode}):\n"
                               f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        log = path.parent / f"{path.name}.build.json"
        log.write_text(json.dumps({"kind": kind, "seed": seed, "seconds": round(time.monotonic() - started, 1),
                                   "bytes": path.stat().st_size}))
    return path


# --------------------------------------------------------------------------------------------
# LoRA files for stock-loader tests

def kohya_unet_lora_names(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    """kohya name (lora_unet_<diffusers path>) -> weight shape, for every UNet Linear/1x1 of an SD-style checkpoint.

    Names come from ComfyUI's own diffusers<->SGM map (comfy.utils.unet_to_diffusers), i.e. exactly the
    names the stock LoraLoader maps; shapes come from the file header (no model is instantiated).
    """
    import torch
    from safetensors import safe_open

    from .comfy_env import import_comfy

    import_comfy()
    import comfy.model_detection
    import comfy.utils

    prefix = "model.diffusion_model."
    with safe_open(str(checkpoint), "pt") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    meta = {k[len(prefix):]: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith(prefix)}
    unet_config = comfy.model_detection.detect_unet_config(meta, "")
    names = {}
    for diffusers_key, sgm_key in comfy.utils.unet_to_diffusers(unet_config).items():
        if not diffusers_key.endswith(".weight"):
            continue
        shape = shapes.get(prefix + sgm_key)
        if shape is None or len(shape) not in (2, 4):
            continue
        names["lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_")] = shape
    return names


def write_kohya_lora(checkpoint: Path, out: Path, rank: int = 4, alpha: float = 4.0, seed: int = 7,
                     scale: float = 0.05, pattern: str = "attn") -> list[str]:
    """A hand-made kohya LoRA on the checkpoint's UNet modules whose kohya name contains pattern.

    Random small down/up so the delta is non-zero. Returns the module names written.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    written = []
    for name, shape in sorted(kohya_unet_lora_names(checkpoint).items()):
        if pattern not in name:
            continue
        out_features, in_features = shape[0], shape[1]
        tail = (1, 1) if len(shape) == 4 else ()
        if len(shape) == 4 and tuple(shape[2:]) != (1, 1):
            continue  # keep to linear / 1x1 modules
        tensors[f"{name}.lora_down.weight"] = torch.randn((rank, in_features) + tail, generator=generator) * scale
        tensors[f"{name}.lora_up.weight"] = torch.randn((out_features, rank) + tail, generator=generator) * scale
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
        written.append(name)
    if not written:
        raise RuntimeError(f"no UNet module of {checkpoint} matches {pattern!r}")
    _save(tensors, out, {"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})
    return written


def write_comfy_native_lora(model_file: Path, out: Path, patterns: tuple[str, ...], rank: int = 4,
                            alpha: float = 4.0, seed: int = 7, scale: float = 0.05, file_prefix: str = "") -> list[str]:
    """A LoRA in ComfyUI's native key format (diffusion_model.<module>.lora_down/lora_up/alpha) for every
    2-d weight of model_file whose module path contains one of patterns. file_prefix: the prefix the UNet
    keys carry in model_file ("" for UNETLoader files, "model.diffusion_model." for checkpoints)."""
    import torch
    from safetensors import safe_open

    generator = torch.Generator().manual_seed(seed)
    with safe_open(str(model_file), "pt") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    tensors, written = {}, []
    for key in sorted(shapes):
        if not key.startswith(file_prefix) or not key.endswith(".weight") or len(shapes[key]) != 2:
            continue
        module = key[len(file_prefix): -len(".weight")]
        if not any(p in module for p in patterns):
            continue
        out_features, in_features = shapes[key]
        name = "diffusion_model." + module
        tensors[f"{name}.lora_down.weight"] = torch.randn((rank, in_features), generator=generator) * scale
        tensors[f"{name}.lora_up.weight"] = torch.randn((out_features, rank), generator=generator) * scale
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
        written.append(module)
    if not written:
        raise RuntimeError(f"no 2-d weight of {model_file} matches {patterns}")
    _save(tensors, out)
    return written


def detect_model_class(model_file: Path, unet_prefix: str = "") -> str:
    """Name of the supported_models class ComfyUI detects for the UNet in model_file (from shapes only)."""
    import torch
    from safetensors import safe_open

    from .comfy_env import import_comfy

    import_comfy()
    import comfy.model_detection

    with safe_open(str(model_file), "pt") as handle:
        meta = {k[len(unet_prefix):]: torch.empty(tuple(handle.get_slice(k).get_shape()), device="meta")
                for k in handle.keys() if k.startswith(unet_prefix)}
    config = comfy.model_detection.model_config_from_unet(meta, "")
    return type(config).__name__ if config is not None else "None"


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build one model kind into a file (needs COMFYUI_PATH)")
    b.add_argument("kind", choices=sorted(MODEL_KINDS))
    b.add_argument("out", type=Path)
    b.add_argument("--seed", type=int, default=SEED)
    e = sub.add_parser("ensure", help="build into the cache if missing, print the path")
    e.add_argument("kind", choices=sorted(MODEL_KINDS))
    e.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2].parent))
    if args.cmd == "build":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from comfy_env import import_comfy  # run as a script: sibling import

        import_comfy()
        started = time.monotonic()
        build(args.kind, args.out, args.seed)
        print(f"built {args.kind} -> {args.out} ({args.out.stat().st_size / 1e9:.2f} GB, "
              f"{time.monotonic() - started:.0f}s)")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.integration.comfy_models import ensure_model as ensure

    print(ensure(args.kind, args.cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
