"""Wan clips in a real ComfyUI (in this process): a random small Wan 2.1 T2V loaded by UNETLoader with its
Wan VAE trains on 4N+1-frame clips from Load Training Videos, conditioned through the captions list (a test
node stands in for umT5); the fixed-noise loss drops, and sampling with the in-graph MODEL and with the saved
file through the stock LoraLoaderModelOnly gives the same latent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from .comfy_inprocess import call_node, register_lora_lab_nodes
from .sample_data import assert_latents_close

av = pytest.importorskip("av", reason="PyAV reads the training videos")


@pytest.fixture(scope="module")
def wan(comfy, model_file, tmp_path_factory):
    from . import comfy_models

    if "wan21_t2v_small" not in comfy_models.MODEL_KINDS or "wan_vae" not in comfy_models.MODEL_KINDS:
        pytest.skip("needs the harness' Wan kinds (wan21_t2v_small, wan_vae) in tests/integration/comfy_models.py")
    return load_wan("wan21_t2v_small", model_file, tmp_path_factory)


def load_wan(kind: str, model_file, tmp_path_factory) -> tuple:
    """(MODEL from UNETLoader, VAE from VAELoader, the loras folder), the stock loaders reading built files."""
    import folder_paths

    register_lora_lab_nodes()
    unet, vae = model_file(kind), model_file("wan_vae")
    folder_paths.add_model_folder_path("diffusion_models", str(unet.parent))
    folder_paths.add_model_folder_path("vae", str(vae.parent))
    loras = tmp_path_factory.mktemp("loras")
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    (model,) = call_node("UNETLoader", unet_name=unet.name, weight_dtype="default")
    (wan_vae,) = call_node("VAELoader", vae_name=vae.name)
    return model, wan_vae, loras


def train_on_clips(model, vae, dataset, conds, name: str, **inputs) -> tuple:
    """Train LoRA, 25 steps at batch 2 on the clips; inputs override (target_preset, precision, ...)."""
    settings = dict(steps=25, learning_rate=5e-3, rank=8, alpha=8.0, target_preset="attention", batch_size=2,
                    grad_accumulation=1, lr_schedule="constant", warmup_steps=0, timestep_sampling="auto",
                    precision="auto", gradient_checkpointing=True, seed=0, output_name=name)
    return call_node("LoraLabTrain", model=model, vae=vae, dataset=dataset, conditioning=conds, **{**settings, **inputs})[:4]  # MODEL, LORA, LOSS, CLIP (two more: the low-noise expert's)


def write_clip(path: Path, frames: int, seed: int, size=(64, 64), lossless: bool = False) -> None:
    """A moving colour pattern (so frames differ), h264; lossless: crf 0, so the frames decode as written."""
    rng = np.random.default_rng(seed)
    phase, speed = rng.uniform(0, 6, 3), rng.uniform(0.2, 0.6)
    yy, xx = np.mgrid[0:size[1], 0:size[0]] / size[0]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        if lossless:
            stream.options = {"crf": "0"}
        for t in range(frames):
            rgb = np.stack([0.5 + 0.5 * np.sin(5 * xx + 3 * yy + phase[c] + speed * t) for c in range(3)], -1)
            frame = av.VideoFrame.from_ndarray((rgb * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def conditioning(texts: list[str]) -> list:
    from .test_nodes import LoraLabTestConditioning

    return [call_node(LoraLabTestConditioning, text=t, seed=0, length=16, width=4096, pooled_width=0, guidance=0.0)[0]
            for t in texts]


def eval_loss(model, dataset, vae, conds) -> float:
    import comfy.model_management

    from lora_lab.lora_core.training.validation import ValidationLoss
    from lora_lab.nodes.comfy_backend import ComfyBackend
    from lora_lab.nodes.training_data import prepare_training_data

    with torch.inference_mode():  # loading and encoding run as in ComfyUI's executor (a quantized model's
        comfy.model_management.load_models_gpu([model])  # weights moved outside it cannot be unloaded inside it)
        data = prepare_training_data(model, dataset, vae, None, conds, 1, seed=0)
    with torch.inference_mode(False):
        return ValidationLoss(ComfyBackend(model), data.samples, every=0, seed=99).evaluate()


def sample(model, positive, seed=5) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 16, 3, 8, 8)}  # 9 frames of 64x64 in Wan's latent space
    (out,) = call_node("KSampler", model=model, seed=seed, steps=3, cfg=1.0, sampler_name="euler", scheduler="simple",
                       positive=positive, negative=positive, latent_image=latent, denoise=1.0)
    return out["samples"]


def clip_dataset(tmp_path: Path) -> tuple:
    """Two captioned 12-frame clips read as 9-frame samples: (dataset, summary, one conditioning per caption)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(2):
        write_clip(folder / f"clip{i}.mp4", frames=12, seed=i)
        (folder / f"clip{i}.txt").write_text(f"moving pattern number {i}")
    dataset, summary, captions = call_node(
        "LoraLabVideoDataset", folder=str(folder), resolution=64, frames=9, frame_sampling="head", target_fps=0.0,
        clips_per_video=1, aspect_buckets=True, include_images=False, short_videos="fewer_frames", trigger_word="",
        caption_template="", default_caption="", validation=0.0, cache_folder="")
    return dataset, summary, conditioning(captions)


def assert_file_matches_in_graph(model, trained, lora, name: str, positive) -> None:
    """The saved file through the stock LoraLoaderModelOnly samples the in-graph trained MODEL's latent."""
    (path,) = call_node("LoraLabSaveLora", lora=lora, name=name)
    (from_file,) = call_node("LoraLoaderModelOnly", model=model, lora_name=Path(path).name, strength_model=1.0)
    in_graph, loaded, base = sample(trained, positive), sample(from_file, positive), sample(model, positive)
    assert_latents_close(in_graph, loaded, f"{name}: in-graph vs from-file (LoraLoaderModelOnly)")
    assert (in_graph - base).abs().max() > 10 * (in_graph - loaded).abs().max()


def test_wan_trains_on_clips_and_its_file_matches_in_graph(wan, tmp_path, capsys):
    model, vae, loras = wan
    dataset, summary, conds = clip_dataset(tmp_path)
    assert [c.frame_count for c in dataset.images] == [9, 9] and "9 frames" in summary

    before = eval_loss(model, dataset, vae, conds)
    trained, lora, loss, _clip = train_on_clips(model, vae, dataset, conds, "wan_clips", target_preset="all_linear",
                                                precision="fp32")
    after = eval_loss(trained, dataset, vae, conds)
    with capsys.disabled():
        print(f"\nWan clips: fixed-noise loss {before:.4f} -> {after:.4f}; train losses {[round(x, 4) for x in loss['loss']]}")
    assert after < 0.9 * before

    from lora_lab.nodes.training_data import prepare_training_data

    shapes = {tuple(s.latent.shape) for s in prepare_training_data(model, dataset, vae, None, conds, 1, 0).samples}
    assert shapes == {(16, 3, 8, 8)}  # 5-D: 9 frames -> 3 latent frames of 64/8 x 64/8

    assert_file_matches_in_graph(model, trained, lora, "wan_clips", conds[0])
