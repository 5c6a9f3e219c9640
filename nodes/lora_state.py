"""The LORA socket's value: trained weights, keyed by module path, plus the file metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lora_core.lora_file import training_metadata
from ..lora_core.lora_weights import LoraWeights


def _kohya_name(family: str):
    """Module path in ComfyUI's diffusion model -> the kohya name ComfyUI's loader maps for this family."""
    try:
        from ..converters import comfyui_kohya_names
    except ImportError:
        comfyui_kohya_names = None

    def name(path: str) -> str:
        if comfyui_kohya_names is not None:
            mapped = comfyui_kohya_names(family, [path]).get(path)
            if mapped:
                return mapped
        return "lora_unet_" + path.replace(".", "_")

    return name


@dataclass
class TrainedLora:
    weights: LoraWeights
    family: str

    @property
    def metadata(self) -> dict[str, str]:
        return self.weights.metadata

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.weights.kohya_state_dict(_kohya_name(self.family))


def trained_lora(result, config, dataset, family: str, name: str, prediction: str = "") -> TrainedLora:
    """Attach ss_*/modelspec metadata (lora_core.lora_file.training_metadata) to a TrainResult's weights."""
    metadata = training_metadata(
        family=family, rank=config.rank, alpha=config.alpha, learning_rate=config.learning_rate,
        max_steps=config.steps, steps_done=result.steps_done, num_images=len(dataset.images),
        batch_size=config.batch_size, grad_accum=config.grad_accum, lr_schedule=config.lr_schedule,
        warmup_steps=config.warmup_steps, seed=config.seed, precision=config.precision, dropout=config.dropout,
        targets=config.targets, prediction=prediction, output_name=name,
        trigger_words=dataset.trigger_word, captions=[image.caption for image in dataset.images],
        resolution=dataset.resolution,
    )
    weights = LoraWeights(modules=result.lora.modules, metadata={**result.lora.metadata, **metadata})
    return TrainedLora(weights=weights, family=family)
