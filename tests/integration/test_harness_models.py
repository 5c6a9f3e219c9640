"""The harness' other architectures on a real ComfyUI: detection from shapes, stock loaders, sampling,
and a ComfyUI-native-key LoRA through the stock LoraLoaderModelOnly with every key mapped."""

from __future__ import annotations

import pytest
import torch

from .comfy_models import detect_model_class, write_comfy_native_lora
from .sample_data import read_latent
from .workflows import Graph, checkpoint_sample_workflow, unet_sample_workflow

FLOW_MODELS = {
    # kind: (ComfyUI class it must be detected as, CLIPLoader type, latent channels, LoRA module patterns)
    "flux_small": ("Flux", "stable_diffusion", 16, ("img_attn.qkv", "linear1", "txt_attn.proj")),
    "sd3_small": ("SD3", "sd3", 16, ("attn.qkv", "attn.proj")),
}


@pytest.mark.parametrize("kind", sorted(FLOW_MODELS))
def test_flow_model_detects_samples_and_takes_native_lora(kind, comfy_server, model_file, loras_dir):
    expected_class, clip_type, channels, patterns = FLOW_MODELS[kind]
    unet = model_file(kind)
    clip = model_file("clip_l")
    assert detect_model_class(unet) == expected_class

    mark = comfy_server.log_mark()
    wf = unet_sample_workflow(unet.name, clip.name, clip_type, filename_prefix=f"latents/{kind}_base")
    base = read_latent(comfy_server.output_files(comfy_server.run(wf, timeout=900))[0])
    again = read_latent(comfy_server.output_files(comfy_server.run(
        unet_sample_workflow(unet.name, clip.name, clip_type, filename_prefix=f"latents/{kind}_again"),
        timeout=900))[0])
    assert base.shape == (1, channels, 8, 8) and torch.isfinite(base).all()
    assert torch.equal(base, again)

    lora = loras_dir / f"{kind}_native.safetensors"
    modules = write_comfy_native_lora(unet, lora, patterns)
    assert modules
    wf = unet_sample_workflow(unet.name, clip.name, clip_type, lora=(lora.name, 1.0),
                              filename_prefix=f"latents/{kind}_lora")
    with_lora = read_latent(comfy_server.output_files(comfy_server.run(wf, timeout=900))[0])
    log = comfy_server.log_since(mark)
    assert "lora key not loaded" not in log, log[-4000:]
    assert (with_lora - base).abs().max().item() > 1e-4


def _check_vae_round_trip(comfy_server, vae_name: str, dataset_dir, prefix: str, latent_shape: tuple) -> None:
    """VAELoader -> encode the first dataset image -> SaveLatent (of latent_shape), and decode it -> SaveImage."""
    g = Graph()
    vae_node = g.add("VAELoader", vae_name=vae_name)
    image = g.add("LoadImage", image=f"{dataset_dir.name}/img_00.png")
    latent = g.add("VAEEncode", pixels=image[0], vae=vae_node[0])
    g.add("SaveLatent", samples=latent[0], filename_prefix=f"latents/{prefix}_encode")
    decoded = g.add("VAEDecode", samples=latent[0], vae=vae_node[0])
    g.add("SaveImage", images=decoded[0], filename_prefix=f"{prefix}_decode")
    history = comfy_server.run(g.api(), timeout=600)
    latents = [p for p in comfy_server.output_files(history) if p.suffix == ".latent"]
    images = [p for p in comfy_server.output_files(history) if p.suffix == ".png"]
    assert read_latent(latents[0]).shape == latent_shape
    assert images and images[0].exists()


def test_flux_vae_loads_as_16_channel_and_round_trips(comfy_server, model_file, dataset_dir):
    _check_vae_round_trip(comfy_server, model_file("flux_vae").name, dataset_dir, "flux_vae", (1, 16, 8, 8))


@pytest.mark.slow
def test_sdxl_small_checkpoint_loads_with_sdxl_conditioning(comfy_server, model_file):
    ckpt = model_file("sdxl_small")
    # Detected as Segmind_Vega: an SDXL subclass (model_base.SDXL, SDXL CLIP-L+G, pooled + size conds).
    assert detect_model_class(ckpt, "model.diffusion_model.") == "Segmind_Vega"
    mark = comfy_server.log_mark()
    history = comfy_server.run(checkpoint_sample_workflow(ckpt.name, filename_prefix="latents/sdxl_small",
                                                          steps=2), timeout=1200)
    latent = read_latent(comfy_server.output_files(history)[0])
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()
    log = comfy_server.log_since(mark)
    assert "SDXLClipModel" in log, log[-3000:]
    assert "missing" not in log.lower(), log[-3000:]


def _wan_sample_workflow(unet_name: str, prompt: str, prefix: str, lora: tuple[str, float] | None = None,
                         seed: int = 42) -> dict:
    """UNETLoader (Wan) [-> LoraLoaderModelOnly] -> KSampler over a 5-frame 64x64 video latent -> SaveLatent.
    Text conditioning: LoraLabTestConditioning at umT5-XXL's width (4096), no pooled output."""
    g = Graph()
    model = g.add("UNETLoader", unet_name=unet_name, weight_dtype="default")[0]
    if lora is not None:
        model = g.add("LoraLoaderModelOnly", model=model, lora_name=lora[0], strength_model=lora[1])[0]
    pos = g.add("LoraLabTestConditioning", text=prompt, seed=0, length=16, width=4096, pooled_width=0, guidance=0.0)
    neg = g.add("LoraLabTestConditioning", text="", seed=0, length=16, width=4096, pooled_width=0, guidance=0.0)
    latent = g.add("EmptyHunyuanLatentVideo", width=64, height=64, length=5, batch_size=1)
    sampler = g.add("KSampler", model=model, positive=pos[0], negative=neg[0], latent_image=latent[0], seed=seed,
                    steps=3, cfg=1.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    g.add("SaveLatent", samples=sampler[0], filename_prefix=prefix)
    return g.api()


def test_wan21_t2v_detects_samples_video_and_takes_native_lora(comfy_server, model_file, loras_dir):
    unet = model_file("wan21_t2v_small")
    assert detect_model_class(unet) == "WAN21_T2V"
    mark = comfy_server.log_mark()
    base = read_latent(comfy_server.output_files(comfy_server.run(
        _wan_sample_workflow(unet.name, "a cat", "latents/wan_base"), timeout=900))[0])
    again = read_latent(comfy_server.output_files(comfy_server.run(
        _wan_sample_workflow(unet.name, "a cat", "latents/wan_again"), timeout=900))[0])
    # 5 frames -> 2 latent frames (4x temporal), 64 px -> 8 (8x spatial), 16 channels
    assert base.shape == (1, 16, 2, 8, 8) and torch.isfinite(base).all()
    assert torch.equal(base, again)

    lora = loras_dir / "wan21_native.safetensors"
    modules = write_comfy_native_lora(unet, lora, ("self_attn.q", "cross_attn.k", "ffn.0"))
    assert len(modules) == 2 * 3, modules  # 2 blocks x (self_attn.q, cross_attn.k, ffn.0)
    with_lora = read_latent(comfy_server.output_files(comfy_server.run(
        _wan_sample_workflow(unet.name, "a cat", "latents/wan_lora", lora=(lora.name, 1.0)), timeout=900))[0])
    log = comfy_server.log_since(mark)
    assert "lora key not loaded" not in log, log[-4000:]
    assert (with_lora - base).abs().max().item() > 1e-4


def test_wan_vae_loads_and_round_trips_a_frame(comfy_server, model_file, dataset_dir):
    # one image = one video frame: (B, 16, T=1, H/8, W/8)
    _check_vae_round_trip(comfy_server, model_file("wan_vae").name, dataset_dir, "wan_vae", (1, 16, 1, 8, 8))
