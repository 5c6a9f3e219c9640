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


def test_flux_vae_loads_as_16_channel_and_round_trips(comfy_server, model_file, dataset_dir):
    vae = model_file("flux_vae")
    g = Graph()
    vae_node = g.add("VAELoader", vae_name=vae.name)
    image = g.add("LoadImage", image=f"{dataset_dir.name}/img_00.png")
    latent = g.add("VAEEncode", pixels=image[0], vae=vae_node[0])
    g.add("SaveLatent", samples=latent[0], filename_prefix="latents/flux_vae_encode")
    decoded = g.add("VAEDecode", samples=latent[0], vae=vae_node[0])
    g.add("SaveImage", images=decoded[0], filename_prefix="flux_vae_decode")
    history = comfy_server.run(g.api(), timeout=600)
    latents = [p for p in comfy_server.output_files(history) if p.suffix == ".latent"]
    images = [p for p in comfy_server.output_files(history) if p.suffix == ".png"]
    assert read_latent(latents[0]).shape == (1, 16, 8, 8)
    assert images and images[0].exists()


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
