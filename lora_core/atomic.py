"""Atomic file writes: a crash or error never leaves a half-written file at the target path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save as _safetensors_bytes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file in the same directory, fsync it, then os.replace onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # same filesystem -> atomic rename
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Serialise `tensors` (made contiguous, on CPU) to safetensors and write it atomically."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = _safetensors_bytes(flat, metadata=None if metadata is None else {str(k): str(v) for k, v in metadata.items()})
    atomic_write_bytes(path, data)
