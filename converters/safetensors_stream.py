"""Write a safetensors file tensor by tensor: header from shapes first, then each tensor's bytes; atomic replace."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor

from ..lora_core.atomic import new_temp_file
from ..lora_core.errors import LoraFormatError

_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def _nbytes(shape, dtype) -> int:
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def header_bytes(entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None) -> bytes:
    header: dict = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}} if metadata else {}
    offset = 0
    for key, dtype, shape in entries:
        n = _nbytes(shape, dtype)
        header[key] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def write_streaming(path: str | os.PathLike, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                    metadata: dict[str, str] | None, tensors: Iterable[tuple[str, Tensor]]) -> None:
    """`tensors` must yield exactly `entries`, in order. A temp file is os.replace'd onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            f.write(header_bytes(entries, metadata))
            it: Iterator = iter(tensors)
            for key, dtype, shape in entries:
                got_key, t = next(it)
                if got_key != key or t.dtype != dtype or tuple(t.shape) != tuple(shape):
                    raise LoraFormatError(f"internal: streamed tensor {got_key!r} {t.dtype} {tuple(t.shape)} "
                                          f"does not match header entry {key!r} {dtype} {shape}")
                data = t.detach().to("cpu").contiguous().reshape(-1)
                if data.numel():
                    f.write(data.view(torch.uint8).numpy().data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
