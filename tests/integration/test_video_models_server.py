"""Image-to-video and two-expert LoRAs through a real ComfyUI server, on random small Wan models, sampled with the
conditioning nodes a user samples with: a LoRA trained on clips, sampled through the in-graph MODEL and through the
stock LoraLoaderModelOnly on the saved file, gives the same latent, and ComfyUI loads every key of the file.

  Wan 2.1 I2V      Train LoRA (image_to_video auto) -> WanImageToVideo(start_image = a clip's first frame)
  Wan 2.2 TI2V-5B  Train LoRA (image_to_video "first frame") -> Wan22ImageToVideoLatent(start_image)
  Wan 2.2 A14B     Train LoRA with model_low_noise -> two KSamplerAdvanced stages, high- then low-noise expert
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .sample_data import assert_latents_close, read_latent
from .workflows import Graph

av = pytest.importorskip("av", reason="PyAV writes the training videos")

TRAIN = {"steps": 8, "learning_rate": 5e-3, "rank": 4, "alpha": 4.0, "target_preset": "attention", "batch_size": 1,
         "grad_accumulation": 1, "lr_schedule": "constant", "warmup_steps": 0, "timestep_sampling": "auto",
         "precision": "auto", "gradient_checkpointing": True, "seed": 0}
VIDEO_DATASET = {"resolution": 64, "frames": 9, "frame_sampling": "head", "target_fps": 0.0, "clips_per_video": 1,
                 "aspect_buckets": True, "include_images": False, "short_videos": "fewer_frames", "trigger_word": "",
                 "caption_template": "", "default_caption": "", "validation": 0.0, "cache_folder": ""}
PROMPT = "moving pattern number 0"


def write_clips(folder: Path, count: int = 2) -> Path:
    """count captioned 9-frame moving colour patterns (h264); the first clip's first frame also as first.png."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64] / 64
    for i in range(count):
        rng = np.random.default_rng(i)
        phase, speed = rng.uniform(0, 6, 3), rng.uniform(0.2, 0.6)
        with av.open(str(folder / f"clip{i}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=16)
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
            for t in range(9):
                rgb = np.stack([0.5 + 0.5 * np.sin(5 * xx + 3 * yy + phase[c] + speed * t) for c in range(3)], -1)
                for packet in stream.encode(av.VideoFrame.from_ndarray((rgb * 255).astype(np.uint8), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        (folder / f"clip{i}.txt").write_text(f"moving pattern number {i}")
    with av.open(str(folder / "clip0.mp4")) as container:  # decoded as training decodes it
        next(container.decode(container.streams.video[0])).to_image().save(folder.parent / f"{folder.name}_first.png")
    return folder


def text(g: Graph, value) -> list:
    return g.add("LoraLabTestConditioning", text=value, seed=0, length=16, width=4096, pooled_width=0, guidance=0.0)[0]


def train_nodes(g: Graph, model, vae, folder: Path, **inputs):
    dataset = g.add("LoraLabVideoDataset", folder=str(folder), **VIDEO_DATASET)
    return g.add("LoraLabTrain", model=model, vae=vae, dataset=dataset[0], conditioning=text(g, dataset[2]),
                 **dict(TRAIN, **inputs))


def sample_nodes(g: Graph, vae, image_name: str, kind: str, prefix: str, *models) -> None:
    """The user's conditioning for the model kind, sampled with one model (or two experts), saved as a latent."""
    start = g.add("LoadImage", image=image_name)[0]
    positive, negative = text(g, PROMPT), text(g, "")
    if kind == "ti2v":
        latent = g.add("Wan22ImageToVideoLatent", vae=vae, width=64, height=64, length=9, batch_size=1,
                       start_image=start)[0]
    else:
        i2v = g.add("WanImageToVideo", positive=positive, negative=negative, vae=vae, width=64, height=64, length=9,
                    batch_size=1, start_image=start) if kind == "i2v" else None
        if i2v is not None:
            positive, negative, latent = i2v[0], i2v[1], i2v[2]
        else:
            latent = g.add("EmptyHunyuanLatentVideo", width=64, height=64, length=9, batch_size=1)[0]
    common = {"positive": positive, "negative": negative, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}
    if len(models) == 1:
        out = g.add("KSampler", model=models[0], latent_image=latent, seed=5, steps=3, denoise=1.0, **common)[0]
    else:  # Wan 2.2 A14B: the high-noise expert for the first steps, the low-noise one for the rest
        high = g.add("KSamplerAdvanced", model=models[0], latent_image=latent, add_noise="enable", noise_seed=5,
                     steps=4, start_at_step=0, end_at_step=2, return_with_leftover_noise="enable", **common)[0]
        out = g.add("KSamplerAdvanced", model=models[1], latent_image=high, add_noise="disable", noise_seed=5,
                    steps=4, start_at_step=2, end_at_step=10000, return_with_leftover_noise="disable", **common)[0]
    g.add("SaveLatent", samples=out, filename_prefix=prefix)


def latents_by_prefix(server, history: dict) -> dict[str, object]:
    files = [f for f in server.output_files(history) if f.suffix == ".latent"]
    return {f.parent.name: read_latent(f) for f in files}


def run_and_compare(server, kind: str, unets: list[str], vae_name: str, name: str, **train_inputs) -> dict:
    """Train + sample the in-graph MODEL(s) + save; then sample the base and the files through LoraLoaderModelOnly.
    Returns the LoRA file names."""
    folder = write_clips(server.input_dir / f"{name}_clips")
    image = f"{name}_clips_first.png"
    g = Graph()
    loaded = [g.add("UNETLoader", unet_name=u, weight_dtype="default")[0] for u in unets]
    vae = g.add("VAELoader", vae_name=vae_name)[0]
    extra = {"model_low_noise": loaded[1]} if len(loaded) == 2 else {}
    train = train_nodes(g, loaded[0], vae, folder, output_name=name, **extra, **train_inputs)
    files = {"high_noise" if extra else "lora": (train[1], f"{name}_high_noise" if extra else name)}
    if extra:
        files["low_noise"] = (train[5], f"{name}_low_noise")
    for lora, file_name in files.values():
        g.add("LoraLabSaveLora", lora=lora, name=file_name)
    sample_nodes(g, vae, image, kind, f"{name}_in_graph/x", *([train[0], train[4]] if extra else [train[0]]))
    mark = server.log_mark()
    trained = latents_by_prefix(server, server.run(g.api(), timeout=1800))

    g = Graph()
    loaded = [g.add("UNETLoader", unet_name=u, weight_dtype="default")[0] for u in unets]
    vae = g.add("VAELoader", vae_name=vae_name)[0]
    with_files = [g.add("LoraLoaderModelOnly", model=m, lora_name=f"{file_name}.safetensors", strength_model=1.0)[0]
                  for m, (_, file_name) in zip(loaded, files.values())]
    sample_nodes(g, vae, image, kind, f"{name}_from_file/x", *with_files)
    sample_nodes(g, vae, image, kind, f"{name}_base/x", *loaded)
    loaded_latents = latents_by_prefix(server, server.run(g.api(), timeout=1800))
    in_graph, from_file, base = (trained[f"{name}_in_graph"], loaded_latents[f"{name}_from_file"],
                                 loaded_latents[f"{name}_base"])
    assert_latents_close(in_graph, from_file, f"{name}: in-graph vs LoraLoaderModelOnly on the file")
    assert (in_graph - base).abs().max() > 10 * (in_graph - from_file).abs().max(), f"{name}: the LoRA changes nothing"
    assert "lora key not loaded" not in server.log_since(mark)
    return {expert: file_name for expert, (_, file_name) in files.items()}


def test_wan21_i2v_lora_samples_the_same_through_wan_image_to_video(comfy_server, model_file):
    model_file("wan21_i2v_small"), model_file("wan_vae")
    run_and_compare(comfy_server, "i2v", ["wan21_i2v_small.safetensors"], "wan_vae.safetensors", "i2v_lora")


def test_wan22_ti2v_lora_samples_the_same_through_wan22_image_to_video_latent(comfy_server, model_file):
    model_file("wan22_ti2v_small"), model_file("wan22_vae")
    run_and_compare(comfy_server, "ti2v", ["wan22_ti2v_small.safetensors"], "wan22_vae.safetensors", "ti2v_lora",
                    image_to_video="first frame")


def test_wan22_a14b_two_expert_loras_sample_the_same_in_two_stages(comfy_server, model_file):
    model_file("wan22_a14b_high_small"), model_file("wan22_a14b_low_small"), model_file("wan_vae")
    files = run_and_compare(comfy_server, "t2v", ["wan22_a14b_high_small.safetensors",
                                                  "wan22_a14b_low_small.safetensors"],
                            "wan_vae.safetensors", "a14b_lora", steps=12)
    assert files == {"high_noise": "a14b_lora_high_noise", "low_noise": "a14b_lora_low_noise"}
