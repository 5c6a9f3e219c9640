"""Sample previews during training: fixed prompts at a fixed seed, through ComfyUI's own sampler, on the
model being trained (its adapters are live on the shared modules), decoded by the VAE through ComfyUI's
memory manager. Run inside StepReport.evaluating(), so the RNG the training draws from is untouched."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import comfy.model_management
import comfy.sample
import folder_paths

from .progress_events import send_sample

log = logging.getLogger("lora_lab")


def _empty_latent(patcher, width: int, height: int) -> torch.Tensor:
    fmt = patcher.get_model_object("latent_format")
    ratio = getattr(fmt, "spacial_downscale_ratio", 8)
    shape = [1, fmt.latent_channels] + ([1] if getattr(fmt, "latent_dimensions", 2) == 3 else []) + [height // ratio, width // ratio]
    return comfy.sample.fix_empty_latent_channels(patcher, torch.zeros(shape))


def _encode(clip, text: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def render(patcher, clip, vae, options: dict) -> list[torch.Tensor]:
    """One IMAGE (1, H, W, 3) per prompt. The caller holds the evaluating() context."""
    images = []
    negative = _encode(clip, options["negative"])
    for prompt in options["prompts"]:
        latent = _empty_latent(patcher, options["width"], options["height"])
        noise = comfy.sample.prepare_noise(latent, options["seed"])
        samples = comfy.sample.sample(patcher, noise, options["steps"], options["cfg"], options["sampler_name"],
                                      options["scheduler"], _encode(clip, prompt), negative, latent,
                                      disable_pbar=True, seed=options["seed"])
        decoded = vae.decode(samples)
        images.append(decoded.reshape(-1, *decoded.shape[-3:])[:1].float().cpu())
    return images


def save_to_output(images: list[torch.Tensor], name: str, step: int) -> list[Path]:
    """output/lora_lab_previews/<name>_stepNNNNN_<i>.png"""
    from PIL import Image

    folder = Path(folder_paths.get_output_directory()) / "lora_lab_previews"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        array = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        path = folder / f"{name}_step{step:05d}_{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def to_pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray((image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy())


def send_sample_event(image: torch.Tensor, step: int, node_id: str | None) -> None:
    """lora_lab.sample, for the live view (nodes/progress_events.py)."""
    if node_id is not None:
        send_sample(to_pil(image), step, node_id)


class Previewer:
    """Called from Train LoRA's on_step: samples every N steps (and at the last step), keeps what it made."""

    def __init__(self, patcher, clip, vae, options: dict, name: str, node_id: str | None, reload):
        self.patcher, self.clip, self.vae, self.options = patcher, clip, vae, options
        self.name, self.node_id, self.reload = name, node_id, reload
        self.paths: list[Path] = []
        self.latest: list[torch.Tensor] = []

    def due(self, step: int, total: int) -> bool:
        return step % self.options["every"] == 0 or step == total

    def __call__(self, report) -> torch.Tensor | None:
        if not self.due(report.step, report.total):
            return None
        try:
            with report.evaluating():
                images = render(self.patcher, self.clip, self.vae, self.options)
        except comfy.model_management.InterruptProcessingException:
            # ComfyUI cleared its flag when raising: set it again so the run stops (and saves) at this step
            comfy.model_management.interrupt_current_processing(True)
            return None
        finally:
            self.reload()  # the VAE may have evicted the training model; load it back for the next step
        self.latest = images
        self.paths += save_to_output(images, self.name, report.step)
        for image in images:
            send_sample_event(image, report.step, self.node_id)
        log.info("LoRA Lab: previews at step %d written to %s", report.step, self.paths[-1].parent)
        return images[0]
