"""What `lora-lab train` writes (rank 0 only): the LoRA in ComfyUI/kohya form and, on request, diffusers/PEFT form.

The trainer's module names are the diffusers model's own paths. ComfyUI form:
  UNets (SD1.5/SDXL): kohya keys `lora_unet_<diffusers path>`, which kohya's SD1.5 files use and ComfyUI maps
                      for both UNets through its diffusers->SGM table;
  transformers:       the converter's ComfyUI output (original names, q/k/v fused where ComfyUI's model fuses
                      them), strict: a module that cannot be mapped is an error, never dropped.
diffusers form: `<unet|transformer>.<path>.lora_A/B.weight` with the PEFT LoraConfig (ranks, alphas) in the
`lora_adapter_metadata` header, which diffusers' load_lora_weights reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .lora_file import save_lora_file
from .lora_weights import LoraModuleWeights, LoraWeights, kohya_name
from .model_folders import ModelFolder

UNET_FAMILIES = ("sd15", "sdxl")


def comfyui_state_dict(lora: LoraWeights, folder: ModelFolder) -> dict[str, torch.Tensor]:
    if folder.family in UNET_FAMILIES:
        return lora.kohya_state_dict(kohya_name)
    from ..converters.convert import convert_state_dict

    dotted = lora.kohya_state_dict(lambda name: f"{folder.component}.{name}")
    out, _, _ = convert_state_dict(dotted, None, "comfyui", arch=folder.family, strict=True)
    return out


def _plain_lora(lora: LoraWeights) -> bool:
    return all(isinstance(w, LoraModuleWeights) and w.dora_scale is None for w in lora.modules.values())


def diffusers_state_dict(lora: LoraWeights, folder: ModelFolder) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from ..converters.peft_metadata import LORA_ADAPTER_METADATA_KEY, build_config

    if not _plain_lora(lora):  # LoHa / LoKr / DoRA: the converter's exact PEFT form, or an error saying why not
        from ..converters.convert import convert_state_dict

        dotted = lora.kohya_state_dict(lambda name: f"{folder.component}.{name}")
        tensors, meta, _ = convert_state_dict(dotted, None, "diffusers", arch=folder.family, strict=True)
        return tensors, {k: v for k, v in meta.items() if k in (LORA_ADAPTER_METADATA_KEY, "format")}
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(lora.modules):
        w = lora.modules[name]
        base = f"{folder.component}.{name}"
        tensors[f"{base}.lora_A.weight"] = w.down.detach().cpu().contiguous()
        tensors[f"{base}.lora_B.weight"] = w.up.detach().cpu().contiguous()
    config = build_config({n: w.rank for n, w in lora.modules.items()},
                          {n: float(w.alpha) for n, w in lora.modules.items()}, False, False)
    packed = {f"{folder.component}.{k}": v for k, v in config.items()}
    return tensors, {LORA_ADAPTER_METADATA_KEY: json.dumps(packed, sort_keys=True), "format": "pt"}


def write_lora(out_dir: Path, name: str, lora: LoraWeights, folder: ModelFolder, formats: list[str],
               metadata: dict[str, str]) -> list[Path]:
    """<name>.safetensors (ComfyUI form) and/or <name>.diffusers.safetensors; atomic writes."""
    written = []
    if "comfyui" in formats:
        written.append(save_lora_file(out_dir / f"{name}.safetensors", comfyui_state_dict(lora, folder), metadata))
    if "diffusers" in formats:
        tensors, peft_meta = diffusers_state_dict(lora, folder)
        written.append(save_lora_file(out_dir / f"{name}.diffusers.safetensors", tensors, {**metadata, **peft_meta}))
    return written
