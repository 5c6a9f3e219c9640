"""Which LoRA files a model's loaded LoRAs came from, for the trained file's metadata.

A loader keeps, per load, the file keys it read and per patched weight the adapter's tensors, but not the
file. Each load is matched to the files that hold the most of its keys (headers only); files that tie (two
trainings of one recipe share every key) are told apart by content: for a few patched weights, every adapter
tensor must be in the file under that weight's LoRA names. Extra tensors in the file (alpha, diff_b,
reshape) are allowed; a differing one is not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

SAMPLES = 3  # patched weights whose tensors are compared with a candidate file


@dataclass
class LoadedLora:
    """One load of a LoRA file into the model."""

    strength: float
    keys: set[str]  # the file keys the loader read
    # per patched weight: the LoRA key prefixes that name it (any format), and the adapter's tensors
    samples: list[tuple[list[str], list[torch.Tensor]]] = field(default_factory=list)
    mode: str = "patch"  # "bypass": added in forward by a hook (ComfyUI's Load LoRA (Bypass)), weights untouched


def file_keys(path: str | os.PathLike) -> set[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except Exception:  # an unreadable file simply cannot be the source
        return set()


def holds_tensors(path: str | os.PathLike, samples: list[tuple[list[str], list[torch.Tensor]]]) -> bool:
    """Every sampled adapter tensor is in the file, under that weight's LoRA names."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            for prefixes, tensors in samples:
                stored = [f.get_tensor(k) for k in keys if any(k.startswith(p + ".") for p in prefixes)]
                if not all(_in(t, stored) for t in tensors):
                    return False
    except Exception:  # an unreadable file cannot be shown to be the source
        return False
    return True


def _in(tensor: torch.Tensor, stored: list[torch.Tensor]) -> bool:
    return any(s.shape == tensor.shape and torch.equal(tensor.detach().to("cpu", s.dtype), s) for s in stored)


def identify(loads: list[LoadedLora], files: dict[str, str | os.PathLike]) -> list[dict]:
    """One record per load with a non-zero strength, in strength order:
    {"file": name, "strength": s} and, for several files holding the compared tensors, "same_content";
    {"file": None, "strength": s, "unmatched_keys": n} where no file holds its keys and tensors;
    {"file": None, "strength": s, "candidates": [...]} where several files share its keys and no tensors
    could be compared. A bypass load's record also says "mode": "bypass"."""
    headers = {name: file_keys(path) for name, path in files.items()}
    found = []
    for load in sorted(loads, key=lambda l: l.strength):
        if load.strength == 0:
            continue
        best = max((len(load.keys & keys) for keys in headers.values()), default=0)
        tied = sorted(name for name, keys in headers.items() if best and len(load.keys & keys) == best)
        samples = [s for s in load.samples if s[1]][:SAMPLES]
        matching = [name for name in tied if holds_tensors(files[name], samples)] if samples else tied
        if not matching:
            found.append({"file": None, "strength": load.strength, "unmatched_keys": len(load.keys)})
        elif len(matching) > 1 and not samples:
            found.append({"file": None, "strength": load.strength, "candidates": matching})
        else:
            entry = {"file": matching[0], "strength": load.strength}
            if len(matching) > 1:
                entry["same_content"] = matching[1:]
            found.append(entry)
        if load.mode != "patch":
            found[-1]["mode"] = load.mode
    return found
