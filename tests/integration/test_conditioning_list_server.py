"""The captions list through ComfyUI's own executor (a real server): Load Training Images' captions output makes
CLIPTextEncode run once per caption, and Train LoRA receives the whole CONDITIONING list with no CLIP connected.
The result equals training with the CLIP input, since both encode the same captions the same way."""

from __future__ import annotations

from .sample_data import assert_latents_close, saved_latent
from .workflows import DEFAULT_DATASET_INPUTS, DEFAULT_TRAIN_INPUTS, Graph, _sample_and_save_latent

TRAIN = dict(DEFAULT_TRAIN_INPUTS, steps=2, learning_rate=1e-3, seed=11, batch_size=2)


def workflow(ckpt: str, dataset_dir: str, through_list: bool, prefix: str) -> dict:
    g = Graph()
    ckpt_node = g.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    model, clip, vae = ckpt_node[0], ckpt_node[1], ckpt_node[2]
    dataset = g.add("LoraLabDataset", folder=dataset_dir, **DEFAULT_DATASET_INPUTS)
    if through_list:
        encoded = g.add("CLIPTextEncode", clip=clip, text=dataset[2])  # runs once per caption
        train = g.add("LoraLabTrain", model=model, vae=vae, dataset=dataset[0], conditioning=encoded[0], **TRAIN)
    else:
        train = g.add("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=dataset[0], **TRAIN)
    _sample_and_save_latent(g, train[0], clip, "a photo of a cat", 64, 64, 42, 3, prefix)
    return g.api()


def test_captions_list_through_any_text_encoder_trains_like_clip(comfy_server, sd15_checkpoint, dataset_dir):
    ckpt = sd15_checkpoint.name
    listed = saved_latent(comfy_server, comfy_server.run(
        workflow(ckpt, str(dataset_dir), True, "latents/cond_list"), timeout=1800))
    with_clip = saved_latent(comfy_server, comfy_server.run(
        workflow(ckpt, str(dataset_dir), False, "latents/cond_clip"), timeout=1800))
    assert_latents_close(listed, with_clip, "conditioning list vs clip input")
