"""A LoRA read as modules in one naming (ComfyUI's, the model's original or diffusers'), and modules written back
as a LoRA file - for the commands that work on modules rather than keys (merge, resize, bake)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..lora_core.files.safetensors_io import save_safetensors_atomic
from ..lora_core.errors import LoraFormatError
from .analyse import analyse
from .comfyui_keys import comfyui_tensors
from .conversion_error import ConversionError
from .diffusers_keys import adapter_metadata, diffusers_tensors
from .families import Family
from .peft_metadata import LORA_ADAPTER_METADATA_KEY
from .plan import OutModule, build_plan, run_group
from .report import UnmatchedKey
from .source import TensorSource, open_source

@dataclass
class LoraModules:
    path: str
    family: Family
    variant: str
    format: str
    metadata: dict[str, str]
    modules: list[OutModule]
    unconverted: list[UnmatchedKey] = field(default_factory=list)
    dropped: list[UnmatchedKey] = field(default_factory=list)


def read_lora_modules(source: TensorSource | str | os.PathLike, arch: str | None = None,
                      side: str = "comfyui") -> LoraModules:
    """side: "comfyui" (names ComfyUI's loader maps; DoRA parts of fused layers as slices where ComfyUI maps
    them), "diffusers", or "original" (the model's own module names, slices always: for baking)."""
    if not isinstance(source, TensorSource):
        source = open_source(Path(source))
    try:
        a = analyse(source, arch)
        family = a.family
        target = {"comfyui": family.comfy_side, "diffusers": "diffusers", "original": "original"}[side]
        slices = side == "original" or (side == "comfyui" and family.slice_prefix is not None)
        groups = build_plan(source, a.refs, family, target, a.loader(source.meta), slices)
        load = a.loader(source.get)
        modules, unconverted = [], list(a.unmatched)
        for group in groups:
            try:  # rules only look at keys and shapes: a ConversionError here is a rule's verdict, not a failure
                modules += run_group(group, load)
            except ConversionError as e:
                unconverted += [UnmatchedKey(k, str(e)) for r in group.sources if r is not None for k in r.keys.values()]
        return LoraModules(str(source.path or "state dict"), family, a.variant, a.format, dict(source.metadata),
                           modules, unconverted, a.dropped)
    finally:
        source.close()


def encode_modules(family: Family, modules: list[OutModule], to: str
                   ) -> tuple[dict[str, Tensor], dict[str, str], list[tuple[OutModule, str]]]:
    """Tensors (and extra metadata) of a LoRA file holding `modules`, in `to` form ("comfyui" | "diffusers"), and
    the modules a rule cannot write in that form, each with the rule's reason (left out, never a failure)."""
    tensors: dict[str, Tensor] = {}
    config: dict[str, dict[str, dict]] = {}
    rejected: list[tuple[OutModule, str]] = []
    for m in modules:
        try:
            if to == "comfyui":
                produced = comfyui_tensors(family, m)
            else:
                if m.component == "model" and not family.diffusers_supported:
                    raise ConversionError(f"no diffusers name map for {family.name} models")
                produced, entry = diffusers_tensors(family, m.component, m.name, m.weights)
                config.setdefault(entry["component"], {})[entry["module"]] = entry
        except ConversionError as e:
            rejected.append((m, str(e)))
            continue
        tensors.update(produced)
    meta = {LORA_ADAPTER_METADATA_KEY: adapter_metadata(family, config)} if config else {}
    return tensors, meta, rejected


def write_lora(path: str | os.PathLike, family: Family, modules: list[OutModule], to: str,
               metadata: dict[str, str], dtype: torch.dtype | None = None) -> list[tuple[OutModule, str]]:
    """Atomic write of the modules `to` form can hold; returns the others with the rule's reason. Nothing is
    written (LoraFormatError) when no module can be written."""
    tensors, extra, rejected = encode_modules(family, modules, to)
    if not tensors:
        reasons = "; ".join(sorted({why for _, why in rejected}))
        raise LoraFormatError(f"{path}: nothing to write: no module can be written in {to} form ({reasons})")
    if dtype is not None:
        tensors = {k: t.to(dtype) if t.is_floating_point() and not k.endswith(".alpha") else t
                   for k, t in tensors.items()}
    save_safetensors_atomic(tensors, path, {**metadata, **extra, "format": "pt"})
    return rejected
