"""The train -> sample == save -> stock loader -> sample round trip for SDXL (pooled and
size conditioning) and for flow-matching models (Flux- and SD3-shaped, loaded with the stock UNETLoader)."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from .sample_data import assert_latents_close, saved_latent
from .workflows import (LORA_LAB_NODES, TRAIN_OUTPUTS, Graph, _sample_and_save_latent, checkpoint_sample_workflow,
                        lora_lab_train_nodes, unet_sample_workflow)

TRAIN = {"steps": 2, "learning_rate": 1e-3, "rank": 4, "alpha": 4.0, "seed": 5}




def _keys_and_meta(path):
    with safe_open(str(path), "pt") as handle:
        return list(handle.keys()), handle.metadata()


@pytest.mark.slow
def test_sdxl_round_trip(comfy_server, model_file, dataset_dir, loras_dir):
    ckpt = model_file("sdxl_small").name
    g = Graph()
    loader = g.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    train = lora_lab_train_nodes(g, loader[0], loader[1], loader[2], str(dataset_dir), TRAIN)
    g.add(LORA_LAB_NODES["save"], lora=train[TRAIN_OUTPUTS["LORA"]], name="sdxl_roundtrip")
    _sample_and_save_latent(g, train[TRAIN_OUTPUTS["MODEL"]], loader[1], "a photo of a cat", 64, 64, 42, 2,
                            "latents/sdxl_trained")
    mark = comfy_server.log_mark()
    trained = saved_latent(comfy_server, comfy_server.run(g.api(), timeout=2400))
    saved = loras_dir / "sdxl_roundtrip.safetensors"
    reloaded = saved_latent(comfy_server, comfy_server.run(checkpoint_sample_workflow(
        ckpt, lora=(saved.name, 1.0, 1.0), steps=2, filename_prefix="latents/sdxl_reloaded"), timeout=1200))
    log = comfy_server.log_since(mark)
    assert "lora key not loaded" not in log, log[-4000:]
    assert_latents_close(trained, reloaded, "SDXL trained MODEL vs saved file through stock LoraLoader")

    keys, meta = _keys_and_meta(saved)
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    # SDXL is written with SGM block names, as kohya's sdxl scripts do.
    assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") for k in keys), keys[:4]


FLOW = {
    # kind: (CLIPLoader type, VAE kind, latent factory node, family, modelspec architecture, a key we expect)
    "flux_small": ("stable_diffusion", "flux_vae", "flux", "flux-1-dev/lora", "lora_unet_double_blocks_0_img_attn_qkv"),
    "sd3_small": ("sd3", "flux_vae", "sd3", "sd3/lora", "lora_unet_joint_blocks_0_x_block_attn_qkv"),
}


@pytest.mark.parametrize("kind", sorted(FLOW))
def test_flow_model_round_trip(kind, comfy_server, model_file, dataset_dir, loras_dir):
    clip_type, vae_kind, family, arch, expected_key = FLOW[kind]
    unet, clip, vae = model_file(kind), model_file("clip_l"), model_file(vae_kind)
    g = Graph()
    model = g.add("UNETLoader", unet_name=unet.name, weight_dtype="default")[0]
    clip_out = g.add("CLIPLoader", clip_name=clip.name, type=clip_type)[0]
    vae_out = g.add("VAELoader", vae_name=vae.name)[0]
    # auto timesteps: logit-normal for flow models
    train = lora_lab_train_nodes(g, model, clip_out, vae_out, str(dataset_dir),
                                 dict(TRAIN, timestep_sampling="auto"))
    g.add(LORA_LAB_NODES["save"], lora=train[TRAIN_OUTPUTS["LORA"]], name=f"{kind}_roundtrip")
    _sample_and_save_latent(g, train[TRAIN_OUTPUTS["MODEL"]], clip_out, "a photo of a cat", 64, 64, 42, 3,
                            f"latents/{kind}_trained", cfg=1.0)
    mark = comfy_server.log_mark()
    trained = saved_latent(comfy_server, comfy_server.run(g.api(), timeout=1800))
    saved = loras_dir / f"{kind}_roundtrip.safetensors"
    reloaded = saved_latent(comfy_server, comfy_server.run(unet_sample_workflow(
        unet.name, clip.name, clip_type, lora=(saved.name, 1.0), filename_prefix=f"latents/{kind}_reloaded"),
        timeout=900))
    base = saved_latent(comfy_server, comfy_server.run(unet_sample_workflow(
        unet.name, clip.name, clip_type, filename_prefix=f"latents/{kind}_base"), timeout=900))
    log = comfy_server.log_since(mark)
    assert "lora key not loaded" not in log, log[-4000:]
    assert_latents_close(trained, reloaded, f"{kind}: trained MODEL vs saved file through stock LoraLoaderModelOnly")
    assert (trained - base).abs().max().item() > 1e-5, "the trained LoRA has no effect on sampling"

    keys, meta = _keys_and_meta(saved)
    assert meta["modelspec.architecture"] == arch and meta["lora_lab_family"] == family
    assert any(k.startswith(expected_key) for k in keys), keys[:4]
