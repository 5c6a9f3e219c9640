"""The LORA socket's value: trained weights, keyed by module path, plus the file metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import __version__
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


def trained_lora(result, config, dataset, family: str, name: str) -> TrainedLora:
    """Attach ss_*/modelspec metadata (lora_core.lora_file.training_metadata) to a TrainResult's weights."""
    metadata = training_metadata(
        config=config, family=family, output_name=name, steps_done=result.steps_done,
        num_images=len(dataset.images), tag_frequency=dataset.tag_frequency(),
        trigger_words=getattr(dataset, "trigger_word", "") or "", tool_version=__version__,
    )
    weights = LoraWeights(modules=result.lora.modules, metadata={**result.lora.metadata, **metadata})
    return TrainedLora(weights=weights, family=family)
