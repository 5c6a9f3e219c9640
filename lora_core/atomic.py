"""Atomic file writes: a crash or error never leaves a half-written file at the target path."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch

_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def new_temp_file(path: Path) -> tuple[int, str]:
    """A temp file beside `path` (same filesystem, so os.replace is atomic) with the permissions a plain
    open() would give: mkstemp's 0600 would make saved LoRAs unreadable to other users of a shared ComfyUI."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file in the same directory, fsync it, then os.replace onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path)
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
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors encoding with a canonical header (sorted keys).

    safetensors' own writer emits the metadata in hash-map order, which changes from call to call; a
    canonical header makes the same LoRA the same bytes (reproducible runs, content hashes).
    Tensors are laid out by descending element size, then name, so each one stays aligned.
    """
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    order = sorted(flat, key=lambda k: (-flat[k].element_size(), k))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    chunks, offset = [], 0
    for name in order:
        t = flat[name]
        if t.dtype not in _ST_DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * (-len(head) % 8)  # pad so the data starts 8-byte aligned (as safetensors does)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)
