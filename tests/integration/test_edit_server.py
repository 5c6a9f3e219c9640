"""Edit LoRAs through a real ComfyUI server, per family that takes references (random small models of ComfyUI's own
classes): Load Training Images + Control Images -> Train LoRA on the pairs (batch 2: each row with its own
reference) -> sample with ComfyUI's own conditioning nodes (the encoder, then ReferenceLatent on the VAE-encoded
control); the saved file through the stock LoraLoaderModelOnly gives the trained MODEL's latent, no key unloaded.

Flux Kontext trains on the captions through Train LoRA's clip input (a CLIP-L, as flux_small reads), Qwen-Image
edit and Flux 2 on the captions list encoded by the test conditioning node (their encoders are too large here)."""

from __future__ import annotations

import pytest

from .edit_helpers import FAMILIES, make_pairs, skip_unbuildable
from .sample_data import assert_latents_close, saved_latent
from .workflows import DEFAULT_TRAIN_INPUTS, Graph

BESIDE = "(control/ beside the images)"
TRAIN = dict(DEFAULT_TRAIN_INPUTS, steps=3, learning_rate=2e-3, rank=4, alpha=4.0, batch_size=2, seed=3,
             timestep_sampling="auto", target_preset="attention")
PROMPT = "make the square red"


@pytest.fixture(scope="module")
def pairs_folder(server_root):
    return make_pairs(server_root / "input" / "edit_pairs")


def _conditioning(g: Graph, family, text, clip=None):
    """What a user's graph feeds the sampler: the text encoder, and FluxGuidance where the model reads guidance."""
    if clip is not None:
        encoded = g.add("CLIPTextEncode", clip=clip, text=text)[0]
        return g.add("FluxGuidance", conditioning=encoded, guidance=family.guidance)[0]
    return g.add("LoraLabTestConditioning", text=text, seed=0, length=8, width=family.width,
                 pooled_width=family.pooled, guidance=family.guidance)[0]


def _sample(g: Graph, family, model, vae, clip, prefix: str) -> None:
    """The prompt and the control image as the model's reference (ReferenceLatent), sampled to a saved latent."""
    image = g.add("LoadImage", image="edit_pairs/control/img_00.png")[0]
    reference = g.add("VAEEncode", pixels=image, vae=vae)[0]
    positive = g.add("ReferenceLatent", conditioning=_conditioning(g, family, PROMPT, clip), latent=reference)[0]
    size = {"width": 64, "height": 64, "batch_size": 1}
    empty = g.add(family.empty_latent, **size)[0]
    sampled = g.add("KSampler", model=model, positive=positive, negative=positive, latent_image=empty, seed=7, steps=3,
                    cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)[0]
    g.add("SaveLatent", samples=sampled, filename_prefix=prefix)


def _loaders(g: Graph, family, model_file, with_clip: bool):
    model = g.add("UNETLoader", unet_name=model_file(family.unet).name, weight_dtype="default")[0]
    vae = g.add("VAELoader", vae_name=model_file(family.vae).name)[0]
    clip = g.add("CLIPLoader", clip_name=model_file("clip_l").name, type="stable_diffusion")[0] if with_clip else None
    return model, vae, clip


def train_workflow(family, model_file, name: str) -> dict:
    g = Graph()
    with_clip = family.name == "kontext"
    model, vae, clip = _loaders(g, family, model_file, with_clip)
    controls = g.add("LoraLabControlImages", control_folder=BESIDE, control_resolution=0)[0]
    dataset = g.add("LoraLabDataset", folder="edit_pairs", resolution=64, aspect_buckets=True, trigger_word="",
                    caption_template="", default_caption="", validation=0.0, cache_folder="",
                    control_options=controls)
    text = {"clip": clip} if with_clip else {"conditioning": _conditioning(g, family, dataset[2])}
    train = g.add("LoraLabTrain", model=model, vae=vae, dataset=dataset[0], **text, **dict(TRAIN, output_name=name))
    g.add("LoraLabSaveLora", lora=train[1], name=name)
    _sample(g, family, train[0], vae, clip, f"latents/{name}_trained")
    return g.api()


def sample_workflow(family, model_file, prefix: str, lora: str | None = None) -> dict:
    g = Graph()
    model, vae, clip = _loaders(g, family, model_file, family.name == "kontext")
    if lora is not None:
        model = g.add("LoraLoaderModelOnly", model=model, lora_name=lora, strength_model=1.0)[0]
    _sample(g, family, model, vae, clip, prefix)
    return g.api()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_an_edit_lora_trained_on_pairs_samples_the_same_from_its_file(name, comfy_server, model_file, pairs_folder,
                                                                      loras_dir):
    from safetensors import safe_open

    from .comfy_env import import_comfy

    import_comfy()
    family = FAMILIES[name]
    skip_unbuildable(family)
    lora = f"{name}_edit"
    mark = comfy_server.log_mark()
    trained = saved_latent(comfy_server, comfy_server.run(train_workflow(family, model_file, lora), timeout=2400))
    reloaded = saved_latent(comfy_server, comfy_server.run(
        sample_workflow(family, model_file, f"latents/{lora}_reloaded", f"{lora}.safetensors"), timeout=1200))
    base = saved_latent(comfy_server, comfy_server.run(
        sample_workflow(family, model_file, f"latents/{lora}_base"), timeout=1200))
    log = comfy_server.log_since(mark)
    assert "lora key not loaded" not in log, log[-4000:]
    assert_latents_close(trained, reloaded, f"{name}: trained MODEL vs saved file through LoraLoaderModelOnly")
    assert (trained - base).abs().max().item() > 1e-5, "the trained LoRA has no effect on sampling"
    with safe_open(str(loras_dir / f"{lora}.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert '"references": [1]' in meta["lora_lab_pairs"] and '"pairs": 4' in meta["lora_lab_pairs"]
