"""Apply a LoRA state dict to a MODEL/CLIP through ComfyUI's own loader, counting what matched.

Train LoRA's MODEL output, Load LoRA and the saved file all go through ``comfy.sd.load_lora_for_models``,
so a model trained in the graph and the same file loaded by the stock LoraLoader get identical patches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

import comfy.lora
import comfy.lora_convert
import comfy.sd

from ..lora_core.errors import LoraFormatError

log = logging.getLogger("lora_lab")

_MODULE_SUFFIXES = (
    ".lora_down.weight", ".lora_up.weight", ".lora_mid.weight", ".alpha", ".dora_scale",
    ".lora_A.weight", ".lora_B.weight", ".diff", ".diff_b", ".set_weight", ".reshape_weight",
    ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2",
    ".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2",
    ".oft_blocks", ".rescale",
    ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight",
)


def lora_module_names(state_dict: dict[str, torch.Tensor]) -> set[str]:
    """The module prefixes of a LoRA state dict (a key without a known suffix counts as its own module)."""
    names = set()
    for key in state_dict:
        for suffix in _MODULE_SUFFIXES:
            if key.endswith(suffix):
                names.add(key[: -len(suffix)])
                break
        else:
            names.add(key)
    return names


@dataclass
class ApplyReport:
    modules_in_file: int
    modules_matched: int
    unmatched: list[str]

    def __str__(self) -> str:
        text = f"{self.modules_matched} of {self.modules_in_file} LoRA modules matched this model"
        if self.unmatched:
            shown = ", ".join(self.unmatched[:8]) + (" ..." if len(self.unmatched) > 8 else "")
            text += f"; not matched: {shown}"
        return text


def _key_map(model, clip) -> dict[str, str]:
    key_map: dict[str, str] = {}
    if model is not None:
        key_map = comfy.lora.model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    return key_map


def match_report(model, clip, state_dict: dict[str, torch.Tensor]) -> ApplyReport:
    """How many of the file's modules ComfyUI maps onto this MODEL (and CLIP)."""
    converted = comfy.lora_convert.convert_lora(dict(state_dict))
    key_map = _key_map(model, clip)
    names = sorted(lora_module_names(converted))
    unmatched = [n for n in names if n not in key_map]
    return ApplyReport(len(names), len(names) - len(unmatched), unmatched)


def apply_lora(model, clip, state_dict: dict[str, torch.Tensor], strength_model: float, strength_clip: float,
               source: str, family: str | None = None) -> tuple[object, object, ApplyReport]:
    """Return (model, clip) clones carrying the LoRA as ordinary patches, or raise if nothing matched.
    family: what the file was detected as (named in the error when it does not fit the model)."""
    report = match_report(model, clip if strength_clip != 0 else None, state_dict)
    if report.modules_matched == 0:
        what = f"a {family} LoRA" if family else "a LoRA"
        raise LoraFormatError(
            f"LoRA {source}: {what} for another model: none of its {report.modules_in_file} modules match this "
            f"model (first: {', '.join(report.unmatched[:3])})."
        )
    if report.unmatched:
        log.warning("LoRA Lab: %s: %s", source, report)
    new_model, new_clip = comfy.sd.load_lora_for_models(model, clip, state_dict, strength_model, strength_clip)
    return new_model, (new_clip if new_clip is not None else clip), report
