"""Open a LoRA file without loading it: safetensors header + lazy tensor access; never unpickle."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..lora_core.errors import LoraFormatError
from ..lora_core.files.safetensors_io import SafetensorsReader

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class TensorSource:
    """keys / shape / dtype without reading data; get(key) reads one tensor; meta(key) is a shape-only stand-in."""

    path: Path | None = None
    metadata: dict[str, str]

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        raise NotImplementedError

    def get(self, key: str) -> Tensor:
        raise NotImplementedError

    def meta(self, key: str) -> Tensor:
        return torch.empty(self.shape(key), dtype=self.dtype(key), device="meta")

    def close(self) -> None:
        pass

    def nbytes(self) -> int:
        return sum(torch.Size(self.shape(k)).numel() * torch.empty((), dtype=self.dtype(k)).element_size() for k in self.keys())


class DictSource(TensorSource):
    def __init__(self, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None, path: Path | None = None):
        self.tensors, self.metadata, self.path = tensors, dict(metadata or {}), path

    def keys(self):
        return list(self.tensors)

    def shape(self, key):
        return tuple(self.tensors[key].shape)

    def dtype(self, key):
        return self.tensors[key].dtype

    def get(self, key):
        return self.tensors[key]


class SafetensorsSource(TensorSource):
    """A safetensors file read tensor by tensor (lora_core.safetensors_io.SafetensorsReader)."""

    def __init__(self, path: Path):
        self.path = path
        self._reader = SafetensorsReader(path)
        self.metadata = self._reader.metadata

    def keys(self):
        return self._reader.keys()

    def shape(self, key):
        return self._reader.shape(key)

    def dtype(self, key):
        return self._reader.dtype(key)

    def get(self, key):
        return self._reader.read(key)

    def close(self):
        self._reader.close()


def open_source(path: str | os.PathLike) -> TensorSource:
    path = Path(path)
    if not path.is_file():
        raise LoraFormatError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise LoraFormatError(f"{path}: the file is empty")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _pickle_source(path)
    return SafetensorsSource(path)


def _pickle_source(path: Path) -> TensorSource:
    """Legacy .ckpt/.pt/.bin: only what torch.load(weights_only=True) accepts (plain tensors, no code)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception:  # noqa: BLE001 - torch's message advises the unsafe way out; never show it
        raise LoraFormatError(f"{path}: refused: this pickle file contains code or objects other than tensors "
                              f"(or is damaged), and LoRA Lab never runs code from a model file. Use a "
                              f".safetensors version of this LoRA.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise LoraFormatError(f"{path}: not a flat dict of tensors")
    return DictSource(obj, {}, path)
