"""A trained LoRA (lora_core's LoraWeights, keyed by the diffusers model's paths) in the forms `lora-lab train`
writes: ComfyUI/kohya form and diffusers/PEFT form. The CLI is handed FORMS (lora_core never imports converters).

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

import torch

from ..lora_core.adapters.lora_weights import LoraModuleWeights, LoraWeights, kohya_name
from ..lora_core.errors import LoraFormatError, LoraLabError
from .convert import convert_state_dict
from .peft_metadata import LORA_ADAPTER_METADATA_KEY, build_config

UNET_FAMILIES = ("sd15", "sdxl")
DIFFUSERS_NAMED = ("flux", "sd3")  # ComfyUI maps lora_transformer_<diffusers path> keys for these


def comfyui_form(lora: LoraWeights, family: str, component: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if family in UNET_FAMILIES:
        return lora.kohya_state_dict(kohya_name), {}
    if family in DIFFUSERS_NAMED and not _plain_lora(lora):
        # LoHa/LoKr/DoRA cannot be fused into one adapter on ComfyUI's q/k/v weight; ComfyUI maps these
        # diffusers-named keys itself and patches each into its slice of the fused weight
        return lora.kohya_state_dict(lambda name: "lora_transformer_" + name.replace(".", "_")), {}
    dotted = lora.kohya_state_dict(lambda name: f"{component}.{name}")
    try:
        out, _, _ = convert_state_dict(dotted, None, "comfyui", arch=family, strict=True)
    except LoraLabError:
        raise
    except Exception as error:  # the converter's fusing assumes LoRA factors
        raise LoraFormatError(f"cannot write a {family} {_kinds(lora)} in ComfyUI form "
                              f"({type(error).__name__}: {error}); use algorithm = \"lora\" or formats = [\"diffusers\"]") from None
    return out, {}


def _kinds(lora: LoraWeights) -> str:
    return "/".join(sorted({type(w).__name__.replace("Weights", "").replace("ModuleWeights", "") for w in lora.modules.values()}))


def _plain_lora(lora: LoraWeights) -> bool:
    return all(isinstance(w, LoraModuleWeights) and w.dora_scale is None for w in lora.modules.values())


def diffusers_form(lora: LoraWeights, family: str, component: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not _plain_lora(lora):  # LoHa / LoKr / DoRA: the converter's exact PEFT form, or an error saying why not
        dotted = lora.kohya_state_dict(lambda name: f"{component}.{name}")
        tensors, meta, _ = convert_state_dict(dotted, None, "diffusers", arch=family, strict=True)
        return tensors, {k: v for k, v in meta.items() if k in (LORA_ADAPTER_METADATA_KEY, "format")}
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(lora.modules):
        w = lora.modules[name]
        base = f"{component}.{name}"
        tensors[f"{base}.lora_A.weight"] = w.down.detach().cpu().contiguous()
        tensors[f"{base}.lora_B.weight"] = w.up.detach().cpu().contiguous()
    config = build_config({n: w.rank for n, w in lora.modules.items()},
                          {n: float(w.alpha) for n, w in lora.modules.items()}, False, False)
    packed = {f"{component}.{k}": v for k, v in config.items()}
    return tensors, {LORA_ADAPTER_METADATA_KEY: json.dumps(packed, sort_keys=True), "format": "pt"}


# output.formats name -> (lora, family, component) -> (tensors, metadata to add)
FORMS = {"comfyui": comfyui_form, "diffusers": diffusers_form}
