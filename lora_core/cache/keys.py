"""Content hashes for the encoding cache: file bytes, weights, and the keys built from them.

A key names everything an encoding depends on, so a changed input can only miss the cache, never hit a
stale entry: for a latent, the image bytes, its bucket placement, flip and augmentation, and the VAE's
identity; for a caption, its text and the text encoder's identity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

_CHUNK = 1 << 20
SAMPLED_VALUES = 4096  # per tensor, evenly strided over all its elements


def digest_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def file_digest(path: str | Path) -> str:
    """blake2b of a file's bytes, read in chunks (videos can be large)."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def make_key(kind: str, *parts: Any) -> str:
    """A hex key for `parts` (JSON-able: str, numbers, lists, dicts); the kind keeps namespaces apart."""
    text = json.dumps([kind, *parts], sort_keys=True, separators=(",", ":"), default=_json_default)
    return digest_bytes(text.encode())


def weights_fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]], extra: Any = None) -> str:
    """Identity of a set of weights: every name, shape and dtype, and SAMPLED_VALUES values of each tensor.

    Sampled rather than hashed in full so that a multi-GB text encoder costs milliseconds; any other
    checkpoint or fine-tune changes nearly every value, so it changes the sample. `extra` adds what the
    weights alone do not show (compute dtype, patches applied on load, ...).
    """
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps(extra, sort_keys=True, default=_json_default).encode())
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // SAMPLED_VALUES)
        sample = flat[::stride][:SAMPLED_VALUES].to("cpu", torch.float32).contiguous()
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)  # set order changes between processes (hash randomisation)
    if hasattr(value, "__dict__"):
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)
