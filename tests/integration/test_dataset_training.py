"""The dataset features that need Train LoRA in a real ComfyUI (in this process, random SD1.5 / SDXL-shaped):
buckets with mixed shapes at batch 2 and the crop per image, the cache counted at the node (second prompt encodes nothing, one edit re-encodes one, another VAE invalidates),
byte-identical runs with buckets + flip + caption dropout + tag shuffling, and validation loss in LOSS and
in the plot, repeatable at fixed noise."""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch
from PIL import Image

from .comfy_inprocess import call_node
from .dataset_helpers import MIXED, Counted, load_dataset, make_folder

TRAIN = {
    "steps": 2, "learning_rate": 1e-3, "rank": 4, "alpha": 4.0, "target_preset": "attention", "batch_size": 2,
    "grad_accumulation": 1, "lr_schedule": "constant", "warmup_steps": 0, "timestep_sampling": "uniform",
    "precision": "fp32", "gradient_checkpointing": False, "seed": 0, "output_name": "dataset_test",
}


def train(model, clip, vae, dataset, **inputs):
    return call_node("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=dataset, **{**TRAIN, **inputs})[:3]  # CLIP is 4th


def test_buckets_batch_2_and_the_crop_of_every_image(sd15, tmp_path):
    from lora_lab.lora_core.data.buckets import BucketConfig, bucket_sizes, place
    from lora_lab.lora_core.data.image_io import decode_rgb, fit_to_placement

    model, clip, vae = sd15
    vae = copy.copy(vae)
    encodes = Counted(vae, "encode")
    dataset, summary, _ = load_dataset(make_folder(tmp_path / "mixed"))
    assert len(dataset.bucket_groups()) == 3 and "3 buckets in use" in summary
    _model, _lora, loss = train(model, clip, vae, dataset, steps=3)
    assert len(loss["loss"]) == 3 and all(np.isfinite(loss["loss"]))

    sizes = bucket_sizes(BucketConfig(64, 32, 128, 16))
    assert encodes.calls == len(MIXED)
    for image, (pixels,) in zip(dataset.images, encodes.args):
        p = image.placement
        # what the VAE got is the image resized and cut exactly as its placement records
        expected = fit_to_placement(decode_rgb(image.path), p)
        assert pixels.shape == (1, p.bucket[1], p.bucket[0], 3)
        assert np.abs(pixels[0].numpy() - expected).max() < 1e-6
        # and that cut is the smallest any bucket allows, along one side only
        assert p.kept_fraction >= max(place(p.source, b).kept_fraction for b in sizes) - 1e-9
        assert min(p.cut) <= 1


def clear_memory_cache() -> None:
    """Empty the in-memory cache layer of every copy of the module: ComfyUI imports the pack under its folder's
    name, the tests import it as lora_lab, and only the nodes' copy holds the encodings."""
    for name, module in list(sys.modules.items()):
        if name.endswith("lora_core.cache.encoding_cache") and hasattr(module, "SHARED_MEMORY"):
            module.SHARED_MEMORY.clear()


def test_second_prompt_encodes_nothing_edit_re_encodes_one_new_vae_all(sd15, tmp_path):
    model, clip, vae = sd15
    vae, clip = copy.copy(vae), copy.copy(clip)
    encodes, texts = Counted(vae, "encode"), Counted(clip, "encode_from_tokens_scheduled")
    folder, cache = make_folder(tmp_path / "data"), tmp_path / "cache"
    clear_memory_cache()  # the tests before encoded the same pictures with the same VAE: content-addressed hits

    train(model, clip, vae, load_dataset(folder, cache)[0], steps=1)
    assert (encodes.calls, texts.calls) == (6, 6)
    train(model, clip, vae, load_dataset(folder, cache)[0], steps=1, seed=1)  # same process: memory
    assert (encodes.calls, texts.calls) == (6, 6)
    clear_memory_cache()  # as after a restart: only the cache folder can answer
    train(model, clip, vae, load_dataset(folder, cache)[0], steps=1, seed=2)
    assert (encodes.calls, texts.calls) == (6, 6)

    Image.fromarray(np.full((64, 96, 3), 90, np.uint8)).save(folder / "img0.png")
    train(model, clip, vae, load_dataset(folder, cache)[0], steps=1, seed=3)
    assert (encodes.calls, texts.calls) == (7, 6)

    other = copy.copy(vae)
    other.first_stage_model = copy.deepcopy(vae.first_stage_model)
    with torch.no_grad():
        next(other.first_stage_model.parameters()).mul_(1.01)
    other_encodes = Counted(other, "encode")
    train(model, clip, other, load_dataset(folder, cache)[0], steps=1, seed=4)
    assert other_encodes.calls == 6 and texts.calls == 6


def test_same_seed_same_lora_bytes_with_buckets_flip_dropout_shuffle(sd15, tmp_path):
    from lora_lab.lora_core.files.safetensors_io import safetensors_bytes

    model, clip, vae = sd15
    folder = make_folder(tmp_path / "data")
    (augmentation,) = call_node("LoraLabAugmentation", flip=0.5, crop_jitter=0.1, brightness=0.1, contrast=0.0,
                                saturation=0.0, hue=0.0, variants=2, seed=0)
    (captions,) = call_node("LoraLabCaptionOptions", caption_extension=".txt", caption_dropout=0.3, tag_dropout=0.0,
                            shuffle_tags=True, keep_tokens=1, keep_tokens_separator="")

    def run(seed):
        dataset = load_dataset(folder, augmentation=augmentation, caption_options=captions)[0]
        _, lora, loss = train(model, clip, vae, dataset, steps=3, seed=seed)
        return safetensors_bytes(lora.state_dict(), lora.metadata), loss["loss"]

    first, second, other = run(7), run(7), run(8)
    assert first == second
    assert first[0] != other[0]


def test_validation_loss_in_loss_output_and_plot_and_repeatable(sd15, tmp_path):
    from lora_lab.lora_core.files.loss_plot import VALIDATION
    from lora_lab.lora_core.training.validation import ValidationLoss
    from lora_lab.nodes.comfy_backend import ComfyBackend
    from lora_lab.nodes.training_data import prepare_training_data

    import comfy.model_management

    model, clip, vae = sd15
    dataset, summary, captions = load_dataset(make_folder(tmp_path / "data"), validation=2)
    assert "validation: 2 images held out" in summary and len(captions) == 6
    trained, _lora, loss = train(model, clip, vae, dataset, steps=4, validation_every=2, batch_size=1)
    assert [step for step, _ in loss["validation"]] == [2, 4]
    assert all(np.isfinite(v) for _, v in loss["validation"])

    (image,) = call_node("LoraLabLossPlot", loss=loss, width=512, height=256)
    pixels = (image[0].numpy() * 255).round()
    assert int((np.abs(pixels - np.array(VALIDATION)).sum(-1) < 30).sum()) > 20

    comfy.model_management.load_models_gpu([trained])
    data = prepare_training_data(trained, dataset, vae, clip, None, 1, seed=0)
    check = ValidationLoss(ComfyBackend(trained), data.validation, every=0)
    with torch.inference_mode(False):
        first, second = check.evaluate(), check.evaluate()
    assert first == second and np.isfinite(first)
