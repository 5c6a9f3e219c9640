"""Which LoRAs a MODEL already carries (LoraLoader before Train LoRA), for the trained file's metadata.

ComfyUI keeps a loaded LoRA as weight patches whose adapters remember the file keys they were read from
(the whole load's set, shared by its adapters), but not the file. The keys are matched against the headers of
the files in models/loras (headers only), choosing files that cover them. Files with the same keys (two
trainings of one recipe) are told apart by content: for a few patched weights, the file's tensors under that
weight's LoRA names (ComfyUI's own key map) are read and compared with the adapter's. A LoRA whose file is not found,
or whose candidates all differ in content, is recorded with its strength and no file; several files with
identical content are all named.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

import folder_paths

_MAX_FILES = 2000  # header reads are cheap, but a huge loras folder should not stall the run
_SAMPLES = 3  # adapters whose tensors are compared with a candidate file


@dataclass
class _Applied:
    """The LoRA patches applied at one strength: their file keys, and each patched weight's LoRA names
    (ComfyUI's key map, reversed) with its adapter's tensors."""

    keys: set[str] = field(default_factory=set)
    samples: list[tuple[list[str], list[torch.Tensor]]] = field(default_factory=list)


def _lora_names(model) -> dict[str, list[str]]:
    """Model weight key -> the LoRA key prefixes ComfyUI maps onto it (kohya, diffusers, PEFT, ...)."""
    import comfy.lora

    names: dict[str, list[str]] = defaultdict(list)
    for prefix, target in comfy.lora.model_lora_keys_unet(model, {}).items():
        names[target[0] if isinstance(target, tuple) else target].append(prefix)
    return names


def _applied(patcher) -> dict[float, _Applied]:
    by_strength: dict[float, _Applied] = defaultdict(_Applied)
    names = None
    for weight_key, patches in patcher.patches.items():
        for strength, patch, *_ in patches:
            keys = getattr(patch, "loaded_keys", None)
            if not keys:
                continue
            applied = by_strength[float(strength)]
            applied.keys.update(keys)
            tensors = [w for w in getattr(patch, "weights", ()) if isinstance(w, torch.Tensor) and w.dim() > 0]
            if tensors and len(applied.samples) < 4 * _SAMPLES:  # references to ComfyUI's tensors, no copies
                names = _lora_names(patcher.model) if names is None else names
                prefixes = [p for p in names.get(weight_key, ()) if any(k.startswith(p + ".") for k in keys)]
                if prefixes:
                    applied.samples.append((prefixes, tensors))
    return by_strength


def _path(name: str) -> str | None:
    path = folder_paths.get_full_path("loras", name)
    return path if path and path.endswith(".safetensors") else None


def _file_keys(name: str) -> set[str]:
    from safetensors import safe_open

    path = _path(name)
    if path is None:
        return set()
    try:
        with safe_open(path, framework="pt") as f:
            return set(f.keys())
    except Exception:  # an unreadable file simply cannot be the source
        return set()


def _same_content(name: str, samples: list[tuple[list[str], list[torch.Tensor]]]) -> bool:
    """The file holds each sampled adapter's tensors (alpha scalars aside) under that weight's LoRA names."""
    from safetensors import safe_open

    try:
        with safe_open(_path(name), framework="pt") as f:
            present = list(f.keys())
            compared = 0
            for prefixes, tensors in samples:
                stored = [f.get_tensor(k) for k in present if any(k.startswith(p + ".") for p in prefixes)]
                stored = [t for t in stored if t.dim() > 0]
                if not all(_any_equal(t, tensors) for t in stored):
                    return False
                compared += bool(stored)
    except Exception:  # an unreadable file cannot be shown to be the source
        return False
    return compared > 0


def _any_equal(stored: torch.Tensor, tensors: list[torch.Tensor]) -> bool:
    return any(t.shape == stored.shape and torch.equal(t.detach().to("cpu", stored.dtype), stored) for t in tensors)


def base_loras(patcher) -> list[dict]:
    """[{"file": name or None, "strength": s}, ...] for every LoRA patched into the MODEL; "same_content"
    lists other files identical to the named one; "unmatched_keys" counts keys no file's content explains."""
    applied = _applied(patcher)
    if not applied:
        return []
    files = {name: _file_keys(name) for name in folder_paths.get_filename_list("loras")[:_MAX_FILES]}
    found = []
    for strength, lora in sorted(applied.items()):
        left = set(lora.keys)
        while left:
            best = max((len(left & keys) for keys in files.values()), default=0)
            tied = sorted(n for n, keys in files.items() if best and len(left & keys) == best)
            samples = [(p, t) for p, t in lora.samples if any(k.startswith(q + ".") for q in p for k in left)]
            samples = samples[:_SAMPLES]
            matching = [n for n in tied if _same_content(n, samples)] if samples else tied
            if not matching:
                found.append({"file": None, "strength": strength, "unmatched_keys": len(left)})
                break
            entry = {"file": matching[0], "strength": strength}
            if len(matching) > 1:
                entry["same_content"] = matching[1:]
            found.append(entry)
            left -= files[matching[0]]
            for name in matching:
                files.pop(name)
    return found
