"""The LORA socket's value: trained weights, keyed by module path, plus the file metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lora_core.data.captions import tag_frequency
from ..lora_core.data.dataset_metadata import dataset_metadata
from ..lora_core.files.lora_file import algorithm_metadata, training_metadata
from ..lora_core.adapters.lora_weights import LoraWeights, kohya_name
from .text_encoders import kohya_te_name


def _kohya_names(family: str, paths: list[str], te_components: tuple[str, ...] = ()) -> dict[str, str]:
    """Module path in ComfyUI's diffusion model -> the kohya name ComfyUI's loader maps for this family
    (SD1.5: kohya's diffusers block names; others: lora_unet_ + the path); text-encoder modules ("te1:...")
    -> lora_te*_ names as ComfyUI maps them for the CLIP's encoders (te_components)."""
    from ..converters import comfyui_kohya_names

    model_paths = [p for p in paths if ":" not in p]
    names = comfyui_kohya_names(family, model_paths)
    out = {path: names.get(path) or kohya_name(path) for path in model_paths}
    components = set(te_components) | {p.split(":", 1)[0] for p in paths if ":" in p}
    out.update({p: kohya_te_name(p, components) for p in paths if ":" in p})
    return out


@dataclass
class TrainedLora:
    weights: LoraWeights
    family: str
    te_components: tuple[str, ...] = ()  # the text encoders of the CLIP it was trained with (te1, te2, te3)

    @property
    def metadata(self) -> dict[str, str]:
        return self.weights.metadata

    def state_dict(self) -> dict[str, torch.Tensor]:
        names = _kohya_names(self.family, list(self.weights.modules), self.te_components)
        return self.weights.kohya_state_dict(names.__getitem__)

    @property
    def has_text_encoder(self) -> bool:
        return any(":" in name for name in self.weights.modules)


def trained_lora(result, config, dataset, family: str, name: str, prediction: str = "",
                 base_loras: list[dict] | None = None, te_components: tuple[str, ...] = ()) -> TrainedLora:
    """Attach ss_*/modelspec metadata (lora_core.files.lora_file.training_metadata) to a TrainResult's weights."""
    metadata = training_metadata(
        family=family, rank=config.rank, alpha=config.alpha, learning_rate=config.learning_rate,
        max_steps=config.steps, steps_done=result.steps_done, num_images=len(dataset.images),
        batch_size=config.batch_size, grad_accum=config.grad_accum, lr_schedule=config.lr_schedule,
        warmup_steps=config.warmup_steps, seed=config.seed, precision=config.precision, dropout=config.dropout,
        targets=config.targets, prediction=prediction, output_name=name,
        trigger_words=dataset.trigger_word, tag_frequency=tag_frequency(image.caption for image in dataset.images),
        resolution=dataset.resolution, compute_dtype=result.compute_dtype, base_loras=base_loras,
        timestep_sampling=config.timestep_sampling, gradient_checkpointing=result.checkpointing, compile=result.compiled,
    )
    metadata.update(algorithm_metadata(config))
    metadata.update(dataset_metadata(dataset))  # kohya's bucket / caption / augmentation keys
    weights = LoraWeights(modules=result.lora.modules, metadata={**result.lora.metadata, **metadata})
    return TrainedLora(weights=weights, family=family, te_components=tuple(te_components))
