"""Which LoRAs a MODEL already carries (LoraLoader before Train LoRA), for the trained file's metadata.

ComfyUI keeps a loaded LoRA as weight patches; the adapters of one load share one set of the file keys it
read (so a load is told by that set's identity), and each patch carries its weight key and offset (a fused
qkv weight has one per q/k/v slice). August 2026's "Load LoRA (Bypass)" keeps its adapters instead in forward
hooks (nodes/bypass_adapters.py). ComfyUI's key map, reversed, names each patched slice's LoRA keys in
every format. The matching itself is lora_core.base_lora_match.
"""

from __future__ import annotations

from collections import defaultdict

import torch

import folder_paths

from ..lora_core.files.base_lora_match import SAMPLES, LoadedLora, identify
from .bypass_adapters import bypass_adapters

_MAX_FILES = 2000  # header reads are cheap, but a huge loras folder should not stall the run


def _lora_names(model) -> dict[tuple, list[str]]:
    """(model weight key, offset or None) -> the LoRA key prefixes ComfyUI maps onto that weight or slice."""
    import comfy.lora

    names: dict[tuple, list[str]] = defaultdict(list)
    for prefix, target in comfy.lora.model_lora_keys_unet(model, {}).items():
        key = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
        names[key].append(prefix)
    return names


def _loads(patcher) -> list[LoadedLora]:
    loads: dict[int, LoadedLora] = {}
    names = None
    patched = [(weight_key, patch, strength, offset, "patch")
               for weight_key, patches in patcher.patches.items()
               for strength, patch, _strength_model, offset, *_ in patches]
    patched += [(key, adapter, strength, None, "bypass") for key, adapter, strength in bypass_adapters(patcher)]
    for weight_key, patch, strength, offset, mode in patched:
        keys = getattr(patch, "loaded_keys", None)
        if not keys:
            continue
        load = loads.setdefault(id(keys), LoadedLora(float(strength), set(keys), mode=mode))
        tensors = [w for w in getattr(patch, "weights", ()) if isinstance(w, torch.Tensor) and w.dim() > 0]
        if tensors and len(load.samples) < SAMPLES:  # references to ComfyUI's tensors, no copies
            names = _lora_names(patcher.model) if names is None else names
            prefixes = [p for p in names.get((weight_key, offset), ()) if any(k.startswith(p + ".") for k in keys)]
            if prefixes:
                load.samples.append((prefixes, tensors))
    return list(loads.values())


def base_loras(patcher) -> list[dict]:
    """lora_core.files.base_lora_match.identify's records for every LoRA patched into the MODEL."""
    loads = _loads(patcher)
    if not loads:
        return []
    files = {}
    for name in folder_paths.get_filename_list("loras")[:_MAX_FILES]:
        path = folder_paths.get_full_path("loras", name)
        if path and path.endswith(".safetensors"):
            files[name] = path
    return identify(loads, files)
