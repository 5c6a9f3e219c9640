"""What `lora-lab train` writes (rank 0 only): the LoRA in ComfyUI/kohya form and, on request, diffusers/PEFT form.

The trainer's module names are the diffusers model's own paths. ComfyUI form:
  UNets (SD1.5/SDXL): kohya keys `lora_unet_<diffusers path>`, which kohya's SD1.5 files use and ComfyUI maps
                      for both UNets through its diffusers->SGM table;
  transformers:       the converter's ComfyUI output (original names, q/k/v fused where ComfyUI's model fuses
                      them), strict: a module that cannot be mapped is an error, never dropped. LoHa/LoKr/DoRA
                      on Flux/SD3: `lora_transformer_<diffusers path>`, which ComfyUI maps into the fused slices.
diffusers form: `<unet|transformer>.<path>.lora_A/B.weight` with the PEFT LoraConfig (ranks, alphas) in the
`lora_adapter_metadata` header, which diffusers' load_lora_weights reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import LoraFormatError, LoraLabError
from .lora_file import save_lora_file
from .lora_weights import LoraModuleWeights, LoraWeights, kohya_name
from .model_folders import ModelFolder

UNET_FAMILIES = ("sd15", "sdxl")
DIFFUSERS_NAMED = ("flux", "sd3")  # ComfyUI maps lora_transformer_<diffusers path> keys for these


def comfyui_state_dict(lora: LoraWeights, folder: ModelFolder) -> dict[str, torch.Tensor]:
    if folder.family in UNET_FAMILIES:
        return lora.kohya_state_dict(kohya_name)
    if folder.family in DIFFUSERS_NAMED and not _plain_lora(lora):
        # LoHa/LoKr/DoRA cannot be fused into one adapter on ComfyUI's q/k/v weight; ComfyUI maps these
        # diffusers-named keys itself and patches each into its slice of the fused weight
        return lora.kohya_state_dict(lambda name: "lora_transformer_" + name.replace(".", "_"))
    from ..converters.convert import convert_state_dict

    dotted = lora.kohya_state_dict(lambda name: f"{folder.component}.{name}")
    try:
        out, _, _ = convert_state_dict(dotted, None, "comfyui", arch=folder.family, strict=True)
    except LoraLabError:
        raise
    except Exception as error:  # the converter's fusing assumes LoRA factors
        raise LoraFormatError(f"cannot write a {folder.family} {_kinds(lora)} in ComfyUI form "
                              f"({type(error).__name__}: {error}); use algorithm = \"lora\" or formats = [\"diffusers\"]") from None
    return out


def _kinds(lora: LoraWeights) -> str:
    return "/".join(sorted({type(w).__name__.replace("Weights", "").replace("ModuleWeights", "") for w in lora.modules.values()}))


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
