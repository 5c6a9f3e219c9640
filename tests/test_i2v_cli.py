"""`lora-lab train` on Wan image-to-video models (model.image_to_video): tiny random Wan 2.2 I2V, Wan 2.1 I2V (with
CLIP vision states) and Wan 2.2 TI2V-5B folders (nothing downloaded), trained on clips (frame folders). Each clip's
first frame reaches the transformer as diffusers' WanImageToVideoPipeline builds it (prepare_latents is the judge);
it changes the loss and the LoRA's gradient; TI2V's known first frame carries no loss; diffusers loads the LoRA;
models and settings that do not fit are refused before anything loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import tiny_pipeline, write_config
from cond_probe import probe, random_adapters
from lora_lab.converters.trained_lora import FORMS
from lora_lab.lora_core.adapters.injection import attached
from lora_lab.lora_core.cache.encoding_cache import EncodingCache, MemoryStore
from lora_lab.lora_core.cli.config import ConfigError, load_config
from lora_lab.lora_core.cli.model_folders import inspect_folder, load_model
from lora_lab.lora_core.cli.train import preflight, run_training
from lora_lab.lora_core.data.training_samples import build_training_data
from lora_lab.lora_core.data.video_dataset import load_video_folder
from lora_lab.lora_core.errors import DatasetError
from lora_lab.lora_core.files.lora_file import load_lora_file
from lora_lab.lora_core.training.objective import diffusion_loss

FRAMES = 9  # 3 latent frames


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_i2v_pipelines")


def clips(folder: Path, count: int = 2, first_seed: int | None = None) -> Path:
    """Frame folders of moving random patterns, captioned; `first_seed` replaces every clip's first frame."""
    for i in range(count):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        (folder / f"clip{i}").mkdir(parents=True, exist_ok=True)
        for t in range(FRAMES):
            frame = np.roll(base, 3 * t, axis=1)
            if t == 0 and first_seed is not None:
                frame = np.random.default_rng(first_seed + i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(frame).save(folder / f"clip{i}" / f"{t:04d}.png")
        (folder / f"clip{i}.txt").write_text(["red circle", "blue square"][i % 2])
    return folder


def _config(tmp_path: Path, folder: Path, data: Path, mode: str = "auto", **train) -> Path:
    return write_config(tmp_path / "run.toml", folder, tmp_path / "out",
                        model={"path": str(folder), "image_to_video": mode},
                        data={"path": str(data), "trigger_word": "", "video": {"enabled": True, "frames": FRAMES,
                                                                                "include_images": False}},
                        train={"batch_size": 1, **train})


def _samples(model, data: Path):
    dataset = load_video_folder(data, 64, frames=FRAMES, include_images=False)
    return build_training_data(dataset, model.encoders, EncodingCache(None, memory=MemoryStore()), seed=0).samples


def _i2v_inputs(transformer) -> dict:
    """Fixed random inputs of the shapes the I2V pipeline passes (latent + condition channels, image states)."""
    g = torch.Generator().manual_seed(7)
    c = transformer.config
    inputs = {"hidden_states": torch.randn(1, c.in_channels, 3, 8, 8, generator=g), "timestep": torch.tensor([500.0]),
              "encoder_hidden_states": torch.randn(1, 6, c.text_dim, generator=g)}
    if c.image_dim:
        inputs["encoder_hidden_states_image"] = torch.randn(1, 17, c.image_dim, generator=g)
    return inputs


@pytest.mark.parametrize("family,mode,kind", [("wan_i2v", "auto", "concat"), ("wan_i2v_clip", "auto", "concat"),
                                              ("wan_ti2v", "first frame", "latent")])
def test_trains_on_clips_and_diffusers_loads_the_lora(family, mode, kind, models, tmp_path):
    import diffusers
    from test_train_cli import _load_part, _merged

    folder = tiny_pipeline(family, models)
    config = load_config(_config(tmp_path, folder, clips(tmp_path / "clips"), mode))
    preflight(config, 1)
    result = run_training(config, inspect_folder(folder), FORMS)
    assert result.steps_done == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    comfy, meta = load_lora_file(tmp_path / "out" / "lora.safetensors")
    assert meta["lora_lab_family"] == "wan" and meta["lora_lab_first_frame"] == kind
    assert comfy and all(k.startswith("diffusion_model.") or k.startswith("lora_unet_") for k in comfy)

    transformer = _load_part(folder / "transformer")
    parts = {"tokenizer": _load_part(folder / "tokenizer"), "text_encoder": _load_part(folder / "text_encoder"),
             "vae": _load_part(folder / "vae"), "scheduler": _load_part(folder / "scheduler"),
             "transformer": transformer}
    if family == "wan_ti2v":
        pipe = diffusers.WanPipeline(**parts, expand_timesteps=True)
    else:
        import transformers

        clip = (folder / "image_encoder").is_dir()
        image = {"image_encoder": _load_part(folder / "image_encoder") if clip else None,
                 "image_processor": transformers.CLIPImageProcessor.from_pretrained(folder / "image_processor")
                 if clip else None}
        pipe = diffusers.WanImageToVideoPipeline(**parts, **image)
    inputs = _i2v_inputs(transformer)
    with torch.no_grad():
        base = transformer(**inputs).sample
        expected = _merged(transformer, result.lora)(**inputs).sample
        pipe.load_lora_weights(str(tmp_path / "out" / "lora.diffusers.safetensors"))
        loaded = pipe.transformer(**inputs).sample
    assert (expected - base).abs().max() > 1e-4
    torch.testing.assert_close(loaded, expected, atol=2e-5, rtol=1e-4)


def test_the_concat_condition_is_the_pipelines_own(models, tmp_path):
    """The condition channels equal WanImageToVideoPipeline.prepare_latents' for the clip's first frame, and the
    CLIP vision states equal its encode_image's."""
    import diffusers
    from test_train_cli import _load_part

    folder = tiny_pipeline("wan_i2v_clip", models)
    model = load_model(inspect_folder(folder), text_encoder="hashed")
    sample = _samples(model, clips(tmp_path / "clips", count=1))[0]
    first = np.asarray(Image.open(tmp_path / "clips" / "clip0" / "0000.png"))
    import transformers

    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=_load_part(folder / "vae"), scheduler=_load_part(folder / "scheduler"),
        transformer=None, image_encoder=_load_part(folder / "image_encoder"),
        image_processor=transformers.CLIPImageProcessor.from_pretrained(folder / "image_processor"))
    image = torch.from_numpy(first).permute(2, 0, 1)[None].float() / 127.5 - 1
    _, condition = pipe.prepare_latents(image, 1, 4, 64, 64, FRAMES, torch.float32, torch.device("cpu"), None)
    torch.testing.assert_close(sample.cond["condition"], condition[0], atol=1e-5, rtol=1e-4)
    assert torch.equal(sample.cond["condition"][:4, 0], torch.ones(4, 8, 8))
    assert torch.count_nonzero(sample.cond["condition"][:4, 1:]) == 0
    states = pipe.encode_image(Image.fromarray(first), torch.device("cpu"))
    torch.testing.assert_close(sample.cond["image_embeds"], states[0], atol=1e-6, rtol=1e-5)


def test_the_first_frame_reaches_training(models, tmp_path):
    model = load_model(inspect_folder(tiny_pipeline("wan_i2v", models)), text_encoder="hashed")
    sample = _samples(model, clips(tmp_path / "clips", count=1))[0]
    other = torch.from_numpy(np.random.default_rng(9).integers(0, 255, (1, 64, 64, 3)).astype(np.float32) / 255)
    info = _info_of(model, tmp_path / "clips")
    changed = dataclasses.replace(sample, cond=model.encoders.make_cond(
        {"encoder_hidden_states": sample.cond["encoder_hidden_states"]}, dataclasses.replace(info, first_frame=lambda: other)))
    assert torch.equal(changed.latent, sample.latent) and not torch.equal(changed.cond["condition"], sample.cond["condition"])
    adapters = random_adapters(model.backend.root)
    a, again, b = (probe(model.backend, s, adapters, "timestep") for s in (sample, sample, changed))
    loss_a, grad_a, loss_b, grad_b = a.loss, a.grad, b.loss, b.grad
    assert again.loss == loss_a and torch.equal(again.grad, grad_a)  # bit for bit: any change below is the first frame's
    print(f"loss {loss_a} -> {loss_b}; gradient change {float((grad_b - grad_a).norm() / grad_a.norm()):.3g} of its norm")
    assert loss_b != loss_a and (grad_b - grad_a).norm() > 1e-3 * grad_a.norm()


def _info_of(model, data: Path):
    """The SampleInfo of the first clip, as make_cond receives it."""
    seen = []
    make = model.encoders.make_cond

    def spy(text, info):
        seen.append(info)
        return make(text, info)

    encoders = dataclasses.replace(model.encoders, make_cond=spy)
    dataset = load_video_folder(data, 64, frames=FRAMES, include_images=False)
    build_training_data(dataset, encoders, EncodingCache(None, memory=MemoryStore()), seed=0)
    return seen[0]


def test_ti2v_keeps_the_first_frame_out_of_the_loss(models, tmp_path):
    """TI2V-5B: the first latent frame's tokens get timestep 0, its noise changes nothing, its output no gradient."""
    model = load_model(inspect_folder(tiny_pipeline("wan_ti2v", models)), text_encoder="hashed",
                       image_to_video="first frame")
    sample = _samples(model, clips(tmp_path / "clips", count=1))[0]
    assert torch.equal(sample.cond["known_frames"], sample.latent[:, :1])
    adapters = random_adapters(model.backend.root)
    seen = probe(model.backend, sample, adapters, "timestep")
    loss, out_grad, timestep, noise = seen.loss, seen.out_grad, seen.seen, seen.noise
    tokens = sample.latent.shape[-1] * sample.latent.shape[-2] // 4  # 2x2 patches per latent frame
    assert timestep.shape == (1, sample.latent.shape[1] * tokens)
    assert torch.count_nonzero(timestep[0, :tokens]) == 0 and torch.all(timestep[0, tokens:] == timestep[0, -1])
    assert timestep[0, -1] > 0
    # the known frame's noise never reaches the model: another noise there gives the same loss, bit for bit
    x0 = sample.latent[None]
    other = noise.clone()
    other[:, :, :1] = torch.randn(other[:, :, :1].shape, generator=torch.Generator().manual_seed(11))
    with torch.no_grad(), attached(model.backend.root, adapters):
        a = diffusion_loss(model.backend, x0, noise, torch.tensor([0.6]), [sample.cond])
        b = diffusion_loss(model.backend, x0, other, torch.tensor([0.6]), [sample.cond])
    assert torch.equal(a, b) and float(a) == loss
    # proj_out's output for the first frame is overwritten by the known frame: no gradient flows into it
    per_frame = out_grad.reshape(1, sample.latent.shape[1], tokens, -1)
    assert torch.count_nonzero(per_frame[:, 0]) == 0 and torch.count_nonzero(per_frame[:, 1:]) > 0


@pytest.mark.parametrize("family,mode,message", [
    ("wan", "first frame", "is not conditioned on a first frame"),
    ("wan_i2v", "off", "is an image-to-video model"),
    ("sd15", "first frame", "is not conditioned on a first frame"),
])
def test_settings_that_do_not_fit_the_model_are_refused_before_loading(family, mode, message, models, tmp_path):
    folder = tiny_pipeline(family, models)
    config = load_config(_config(tmp_path, folder, clips(tmp_path / "clips", count=1), mode))
    with pytest.raises(ConfigError, match=message):
        preflight(config, 1)


def test_ti2v_on_still_images_names_the_file(models, tmp_path):
    model = load_model(inspect_folder(tiny_pipeline("wan_ti2v", models)), text_encoder="hashed",
                       image_to_video="first frame")
    (tmp_path / "stills").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "stills" / "still.png")
    (tmp_path / "stills" / "still.txt").write_text("red circle")
    dataset = load_video_folder(tmp_path / "stills", 64, frames=FRAMES, include_images=True)
    with pytest.raises(DatasetError, match="still.png gives 1 frame"):
        build_training_data(dataset, model.encoders, EncodingCache(None, memory=MemoryStore()), seed=0)


def test_resume_with_another_first_frame_setting_is_refused(models, tmp_path):
    """TI2V-5B trained with its first frame kept, resumed as text-to-video: the state names what differs."""
    from lora_lab.lora_core.errors import TrainingError

    folder = tiny_pipeline("wan_ti2v", models)
    data = clips(tmp_path / "clips", count=1)
    run_training(load_config(_config(tmp_path, folder, data, "first frame")), inspect_folder(folder), FORMS)
    state = tmp_path / "out" / "lora.state"
    (tmp_path / "again").mkdir()
    config = load_config(_config(tmp_path / "again", folder, data, "auto", steps=3))
    config.output.resume = str(state)
    with pytest.raises(TrainingError, match='first frame: "latent" in the state, null now'):
        run_training(config, inspect_folder(folder), FORMS)


def _two_experts(models, root: Path) -> Path:
    """A Wan 2.2 A14B-shaped I2V folder: the tiny I2V pipeline plus transformer_2/, boundary_ratio 0.9."""
    import json
    import shutil

    shutil.copytree(tiny_pipeline("wan_i2v", models), root)
    shutil.copytree(root / "transformer", root / "transformer_2")
    index = json.loads((root / "model_index.json").read_text())
    index.update(transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.9)
    (root / "model_index.json").write_text(json.dumps(index))
    return root


@pytest.mark.parametrize("part,setting", [("", "timestep_min = 0.9"), ("transformer_2", "timestep_max = 0.9")])
def test_a_two_expert_folder_needs_the_experts_timesteps(part, setting, models, tmp_path):
    """lora-lab train trains one expert of Wan 2.2 A14B: over every timestep by default would be a guess."""
    root = _two_experts(models, tmp_path / "a14b")
    config = load_config(_config(tmp_path, root / part if part else root, clips(tmp_path / "clips", count=1)))
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        preflight(config, 1)


def test_one_expert_trains_on_its_side_of_the_boundary(models, tmp_path):
    root = _two_experts(models, tmp_path / "a14b")
    config = load_config(_config(tmp_path, root, clips(tmp_path / "clips", count=1), timestep_min=0.9))
    preflight(config, 1)
    result = run_training(config, inspect_folder(root), FORMS)
    assert result.steps_done == 2 and inspect_folder(root).denoiser.name == "transformer"
