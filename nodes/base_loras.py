"""Which LoRAs a MODEL already carries (LoraLoader before Train LoRA), for the trained file's metadata.

ComfyUI keeps a loaded LoRA as weight patches whose adapters remember the file keys they were read from,
but not the file. The keys are matched against the headers of the files in models/loras (headers only),
choosing files that cover them; a LoRA whose file is not found is still recorded with its strength.
"""

from __future__ import annotations

from collections import defaultdict

import folder_paths

_MAX_FILES = 2000  # header reads are cheap, but a huge loras folder should not stall the run


def _patch_keys(patcher) -> dict[float, set[str]]:
    """Strength -> the union of file keys of the LoRA patches applied at that strength."""
    by_strength: dict[float, set[str]] = defaultdict(set)
    for patches in patcher.patches.values():
        for strength, patch, *_ in patches:
            keys = getattr(patch, "loaded_keys", None)
            if keys:
                by_strength[float(strength)].update(keys)
    return by_strength


def _file_keys(name: str) -> set[str]:
    from safetensors import safe_open

    path = folder_paths.get_full_path("loras", name)
    if not path or not path.endswith(".safetensors"):
        return set()
    try:
        with safe_open(path, framework="pt") as f:
            return set(f.keys())
    except Exception:  # an unreadable file simply cannot be the source
        return set()


def base_loras(patcher) -> list[dict]:
    """[{"file": name or None, "strength": s}] for every LoRA patched into the MODEL."""
    wanted = _patch_keys(patcher)
    if not wanted:
        return []
    files = {name: _file_keys(name) for name in folder_paths.get_filename_list("loras")[:_MAX_FILES]}
    found = []
    for strength, keys in sorted(wanted.items()):
        left = set(keys)
        while left:
            name, covered = max(((n, len(left & k)) for n, k in files.items()), key=lambda t: t[1], default=(None, 0))
            if not covered:
                found.append({"file": None, "strength": strength, "unmatched_keys": len(left)})
                break
            found.append({"file": name, "strength": strength})
            left -= files.pop(name)
    return found
