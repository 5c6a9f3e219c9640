"""Merge LoRAs and Resize LoRA in a real ComfyUI server: the exact merge of two LoRAs at weights 0.6 and 0.4, loaded by
the stock LoraLoader at strength 1, samples the same latent as the two originals chained at 0.6 and 0.4; the resized
file loads with no "lora key not loaded"."""

from __future__ import annotations

from safetensors import safe_open

from .comfy_models import write_kohya_lora
from .sample_data import assert_latents_close, saved_latent
from .workflows import Graph, _sample_and_save_latent, checkpoint_sample_workflow


def _chained(ckpt: str, loras: list[tuple[str, float]], prefix: str) -> dict:
    g = Graph()
    node = g.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    model, clip = node[0], node[1]
    for name, strength in loras:
        node = g.add("LoraLoader", model=model, clip=clip, lora_name=name, strength_model=strength, strength_clip=strength)
        model, clip = node[0], node[1]
    _sample_and_save_latent(g, model, clip, "a photo of a cat", 64, 64, 42, 3, prefix)
    return g.api()


def test_merge_and_resize_nodes(comfy_server, sd15_checkpoint, loras_dir):
    ckpt = sd15_checkpoint.name
    write_kohya_lora(sd15_checkpoint, loras_dir / "merge_a.safetensors", pattern="attn1", seed=41, scale=0.08)
    write_kohya_lora(sd15_checkpoint, loras_dir / "merge_b.safetensors", pattern="attn2", seed=42, scale=0.08)
    for stale in loras_dir.glob("merged_ab*.safetensors"):
        stale.unlink()

    g = Graph()
    g.add("LoraLabMergeLoras", lora_1="merge_a.safetensors", weight_1=0.6, lora_2="merge_b.safetensors", weight_2=0.4,
          lora_3="[none]", weight_3=1.0, lora_4="[none]", weight_4=1.0, rank=0, to="comfyui", output_name="merged_ab")
    comfy_server.run(g.api(), timeout=600)
    assert (loras_dir / "merged_ab.safetensors").is_file()
    g = Graph()
    g.add("LoraLabResizeLora", lora_name="merged_ab.safetensors", method="rank", rank=2, value=0.9, to="same",
          output_name="")
    comfy_server.run(g.api(), timeout=600)
    with safe_open(str(loras_dir / "merged_ab_resized.safetensors"), "pt") as f:
        ranks = {f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith(".lora_down.weight")}
    assert ranks == {2}

    mark = comfy_server.log_mark()
    merged = saved_latent(comfy_server, comfy_server.run(checkpoint_sample_workflow(
        ckpt, lora=("merged_ab.safetensors", 1.0, 1.0), filename_prefix="latents/merged"), timeout=900))
    chained = saved_latent(comfy_server, comfy_server.run(_chained(
        ckpt, [("merge_a.safetensors", 0.6), ("merge_b.safetensors", 0.4)], "latents/chained"), timeout=900))
    comfy_server.run(checkpoint_sample_workflow(ckpt, lora=("merged_ab_resized.safetensors", 1.0, 1.0),
                                                filename_prefix="latents/resized"), timeout=900)
    assert "lora key not loaded" not in comfy_server.log_since(mark)
    assert_latents_close(chained, merged, "merged LoRA at 1.0 vs the two originals chained at 0.6 and 0.4")
