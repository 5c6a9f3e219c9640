"""The LORA socket's value: trained weights, keyed by module path, plus the file metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lora_core.dataset_metadata import dataset_metadata
from ..lora_core.lora_file import training_metadata
from ..lora_core.lora_weights import LoraWeights, kohya_name


def _kohya_names(family: str, paths: list[str]) -> dict[str, str]:
    """Module path in ComfyUI's diffusion model -> the kohya name ComfyUI's loader maps for this family
    (SD1.5: kohya's diffusers block names; others: lora_unet_ + the path)."""
    from ..converters import comfyui_kohya_names

    names = comfyui_kohya_names(family, paths)
    return {path: names.get(path) or kohya_name(path) for path in paths}


@dataclass
class TrainedLora:
    weights: LoraWeights
    family: str

    @property
    def metadata(self) -> dict[str, str]:
        return self.weights.metadata

    def state_dict(self) -> dict[str, torch.Tensor]:
        names = _kohya_names(self.family, list(self.weights.modules))
        return self.weights.kohya_state_dict(names.__getitem__)


def trained_lora(result, config, dataset, family: str, name: str, prediction: str = "",
                 base_loras: list[dict] | None = None) -> TrainedLora:
    """Attach ss_*/modelspec metadata (lora_core.lora_file.training_metadata) to a TrainResult's weights."""
    metadata = training_metadata(
        family=family, rank=config.rank, alpha=config.alpha, learning_rate=config.learning_rate,
        max_steps=config.steps, steps_done=result.steps_done, num_images=len(dataset.images),
        batch_size=config.batch_size, grad_accum=config.grad_accum, lr_schedule=config.lr_schedule,
        warmup_steps=config.warmup_steps, seed=config.seed, precision=config.precision, dropout=config.dropout,
        targets=config.targets, prediction=prediction, output_name=name,
        trigger_words=dataset.trigger_word, captions=[image.caption for image in dataset.images],
        resolution=dataset.resolution, compute_dtype=result.compute_dtype, base_loras=base_loras,
        timestep_sampling=config.timestep_sampling,
    )
    metadata.update(dataset_metadata(dataset))  # kohya's bucket / caption / augmentation keys
    weights = LoraWeights(modules=result.lora.modules, metadata={**result.lora.metadata, **metadata})
    return TrainedLora(weights=weights, family=family)
