"""SDXL's size conditioning in a real ComfyUI (in this process, random SDXL-shaped checkpoint): every sample gives
the model the ADM vector of its own image's original size, crop top-left (mirrored when flipped) and bucket."""

from __future__ import annotations

import torch

from .comfy_inprocess import call_node, load_checkpoint, register_lora_lab_nodes
from .dataset_helpers import load_dataset, make_folder


def test_sdxl_gets_each_images_real_size_conditioning(comfy, model_file, tmp_path):
    register_lora_lab_nodes()
    model, clip, vae = load_checkpoint(model_file("sdxl_small"))
    from lora_lab.nodes.training_data import prepare_training_data

    dataset, _, _ = load_dataset(make_folder(tmp_path / "mixed", [(96, 64), (64, 96), (80, 80)]), resolution=64,
                                 augmentation=call_node("LoraLabAugmentation", flip=0.5, crop_jitter=0.0, brightness=0.0,
                                                        contrast=0.0, saturation=0.0, hue=0.0, variants=1, seed=0)[0])
    patcher = model.clone()
    data = prepare_training_data(patcher, dataset, vae, clip, None, 1, seed=0)
    assert len(data.samples) == 6  # both orientations
    for sample, info in zip(data.samples, data.infos):
        p = info.placement
        crop_left = p.resized[0] - p.crop[0] - p.bucket[0] if info.flipped else p.crop[0]
        given = sample.cond.inputs()["y"].cond.float().cpu()  # SDXL's ADM vector: pooled CLIP-G (1280) + 6 size embeddings
        pooled = given[:, :1280]
        expected = patcher.model.encode_adm(pooled_output=pooled, width=p.source[0], height=p.source[1],
                                            crop_w=crop_left, crop_h=p.crop[1], target_width=p.bucket[0],
                                            target_height=p.bucket[1])
        assert torch.allclose(given, expected.float().cpu(), atol=1e-5), info.item.path.name
        default = patcher.model.encode_adm(pooled_output=pooled, width=768, height=768)
        assert not torch.allclose(given, default.float().cpu())
