"""Atomic file writes: a crash or error never leaves a half-written file at the target path."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .safetensors_io import new_temp_file, remove_temp, replace_file, safetensors_bytes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file in the same directory, fsync it, then replace `path` with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace_file(tmp, path)  # same filesystem -> atomic rename
    except BaseException:
        remove_temp(tmp)
        raise


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Serialise `tensors` (made contiguous, on CPU) to canonical safetensors bytes and write them atomically."""
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))
