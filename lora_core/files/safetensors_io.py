"""safetensors files on every platform: the dtype table, the header check, a tensor reader, the canonical-bytes
writer and the streaming writer (both atomic: files/atomic.py).

Only plain file objects, os.chmod and os.replace: no os.pread/preadv (not on Windows), os.fchmod (Windows only
from Python 3.13) or os.posix_fallocate (neither Windows nor macOS) unless present.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

from ..errors import LoraFormatError
from .atomic import atomic_write_bytes, new_temp_file, remove_temp, replace_file, reserve_space

# Every dtype safetensors 0.8 defines: header name -> (torch attribute, bits per value). Older torch lacks some
# (uint16/32/64 before 2.3, the newer float8/float4 ones), and no torch has the float6 formats.
_SPEC: dict[str, tuple[str | None, int]] = {
    "BOOL": ("bool", 8), "U8": ("uint8", 8), "I8": ("int8", 8), "U16": ("uint16", 16), "I16": ("int16", 16),
    "F16": ("float16", 16), "BF16": ("bfloat16", 16), "U32": ("uint32", 32), "I32": ("int32", 32),
    "F32": ("float32", 32), "U64": ("uint64", 64), "I64": ("int64", 64), "F64": ("float64", 64),
    "C64": ("complex64", 64), "F8_E4M3": ("float8_e4m3fn", 8), "F8_E5M2": ("float8_e5m2", 8),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 8), "F8_E5M2FNUZ": ("float8_e5m2fnuz", 8), "F8_E8M0": ("float8_e8m0fnu", 8),
    "F4": ("float4_e2m1fn_x2", 4), "F6_E2M3": (None, 6), "F6_E3M2": (None, 6),
}
DTYPE_BITS: dict[str, int] = {name: bits for name, (_, bits) in _SPEC.items()}
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, attr) for name, (attr, _) in _SPEC.items()
                                        if attr is not None and hasattr(torch, attr)}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in TORCH_DTYPES.items()}
# The header counts F4 values; torch's float4_e2m1fn_x2 packs two in one element, so its last dimension is half.
_PACKED = {"F4": 2}

Entry = tuple[str, torch.dtype, tuple[int, ...]]


def header_shape(dtype: torch.dtype, shape: tuple[int, ...] | torch.Size) -> list[int]:
    """The shape the header records for a torch tensor of `dtype` and `shape`."""
    pack = _PACKED.get(DTYPE_NAMES.get(dtype, ""), 1)
    if pack > 1 and not shape:
        raise TypeError(f"a 0-d {dtype} tensor has no safetensors form (its values are counted along the last axis)")
    return [*shape[:-1], shape[-1] * pack] if pack > 1 else list(shape)


def torch_shape(name: str, shape: list[int]) -> tuple[int, ...]:
    """The torch shape of a header entry (`shape` checked by read_safetensors_header)."""
    pack = _PACKED.get(name, 1)
    return (*shape[:-1], shape[-1] // pack) if pack > 1 else tuple(shape)


def nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


# --- reading ----------------------------------------------------------------------------------------------------
def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Validated header (names, dtypes, shapes, offsets) and the data start; clear errors for damaged files."""
    size = path.stat().st_size
    if size == 0:
        raise LoraFormatError(f"{path}: the file is empty")
    if size < 8:
        raise LoraFormatError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n <= 1 or 8 + n > size:
            raise LoraFormatError(f"{path}: corrupt or truncated safetensors header (declares {n} header bytes, "
                                  f"file has {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoraFormatError(f"{path}: corrupt safetensors header (not valid JSON): the file is damaged or is "
                              f"not a safetensors file") from None
    if not isinstance(header, dict):
        raise LoraFormatError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_len = size - 8 - n
    for key, info in header.items():
        if key != "__metadata__":
            _check_entry(path, key, info, data_len)
    return header, 8 + n


def _check_entry(path: Path, key: str, info: Any, data_len: int) -> None:
    try:
        start, end = info["data_offsets"]
        name, shape = info["dtype"], info["shape"]
        numel = torch.Size(shape).numel()
        bits = DTYPE_BITS[name]
        if not isinstance(start, int) or not isinstance(end, int):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise LoraFormatError(f"{path}: corrupt safetensors header entry for {key!r}") from None
    if name not in TORCH_DTYPES:
        raise LoraFormatError(f"{path}: tensor {key!r} has dtype {name}, which this torch ({torch.__version__}) "
                              f"cannot hold")
    if end > data_len:
        raise LoraFormatError(f"{path}: truncated safetensors file: tensor {key!r} ends at byte {end} "
                              f"but only {data_len} data bytes are present")
    packed = name in _PACKED and (not shape or shape[-1] % _PACKED[name])
    if packed or numel * bits % 8 or end - start != numel * bits // 8:
        raise LoraFormatError(f"{path}: corrupt safetensors header: {key!r} size does not match its shape")


class SafetensorsReader:
    """One file's tensors, each read on request into a fresh tensor.

    A plain unbuffered file and readinto, not an mmap: faulting a large mmap in page by page is several times
    slower than one read per tensor (6.9 s vs 0.2 s for a cached 1.4 GB file on a 2-core VM); and not os.preadv,
    which Windows lacks. Seek + read happen under a lock, so threads may share a reader.
    """

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        header, self._data_start = read_safetensors_header(path)
        self.metadata: dict[str, str] = dict(header.get("__metadata__") or {})
        self.entries: dict[str, dict[str, Any]] = {k: v for k, v in header.items() if k != "__metadata__"}
        try:  # safetensors' own checks (overlapping offsets, ...) on top of ours
            with safe_open(str(path), framework="pt", device="cpu"):
                pass
        except Exception:  # noqa: BLE001 - safetensors raises its own error types; its text is not for users
            raise LoraFormatError(f"{path}: corrupt safetensors file (its header's tensor offsets are "
                                  f"inconsistent)") from None
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        info = self.entries[key]
        return torch_shape(info["dtype"], info["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return TORCH_DTYPES[self.entries[key]["dtype"]]

    def read(self, key: str) -> Tensor:
        start, end = self.entries[key]["data_offsets"]
        t = torch.empty(self.shape(key), dtype=self.dtype(key))
        if end > start:
            buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
            with self._lock:
                if self._file.closed:
                    raise LoraFormatError(f"{self.path}: read after close")
                self._file.seek(self._data_start + start)
                done = 0
                while done < len(buf):  # a read may return less (Linux caps one call at ~2 GiB)
                    got = self._file.readinto(buf[done:])
                    if not got:
                        raise LoraFormatError(f"{self.path}: truncated while reading {key!r} ({done} of {len(buf)} "
                                              f"bytes)")
                    done += got
        return t  # safetensors stores little-endian, as every platform torch runs on

    def close(self) -> None:
        with self._lock:
            self._file.close()


# --- writing: the whole file in memory, canonical ---------------------------------------------------------------
def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors encoding with a canonical header (sorted keys).

    Hand-written because safetensors' own writer (still in 0.8) emits the metadata in hash-map order, which
    changes from call to call; a canonical header makes the same LoRA the same bytes (reproducible runs, content
    hashes). Tensors are laid out by descending element size, then name, so each one stays aligned.
    """
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    order = sorted(flat, key=lambda k: (-flat[k].element_size(), k))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    chunks, offset = [], 0
    for name in order:
        t = flat[name]
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": header_shape(t.dtype, t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * (-len(head) % 8)  # pad so the data starts 8-byte aligned (as safetensors does)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


# --- writing: tensor by tensor ----------------------------------------------------------------------------------
def header_bytes(entries: list[Entry], metadata: dict[str, str] | None) -> bytes:
    """The length-prefixed header for `entries` in their order (the streaming writer's layout)."""
    header: dict = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}} if metadata else {}
    offset = 0
    for key, dtype, shape in entries:
        if dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor {key!r} has dtype {dtype}, which safetensors cannot store")
        n = nbytes(dtype, shape)
        header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": header_shape(dtype, shape),
                       "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def _write_all(fd: int, t: Tensor) -> None:
    """The tensor's bytes, straight from its storage (no bytes copy); a write may be partial."""
    view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


class _Writer(threading.Thread):
    """Writes queued tensors in order while the caller computes the next ones (os.write releases the GIL).

    The queue is short, so at most `depth` produced tensors wait in memory.
    """

    def __init__(self, fd: int, depth: int = 4):
        super().__init__(name="lora-lab-safetensors-writer", daemon=True)
        self.fd = fd
        self.queue: queue.Queue[Tensor | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (t := self.queue.get()) is not None:
            if self.error is None:  # after a failure keep draining so put() never blocks forever
                try:
                    _write_all(self.fd, t)
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                    self.error = e

    def put(self, t: Tensor) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(t)

    def finish(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def write_streaming(path: str | os.PathLike, entries: list[Entry], metadata: dict[str, str] | None,
                    tensors: Iterable[tuple[str, Tensor]], depth: int = 4) -> None:
    """`tensors` must yield exactly `entries`, in order. A temp file is replaced onto `path` only on success.

    Space for the whole file is reserved first (a full disk fails before any work), tensors are written from
    a second thread as they are produced (at most `depth` wait in memory), and the file is fsync'ed once at the end.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = header_bytes(entries, metadata)
    total = len(header) + sum(nbytes(dtype, shape) for _, dtype, shape in entries)
    fd, tmp = new_temp_file(path)
    writer: _Writer | None = None
    try:
        reserve_space(fd, path, total)
        _write_all(fd, torch.frombuffer(bytearray(header), dtype=torch.uint8))
        writer = pending = _Writer(fd, depth)
        writer.start()
        it: Iterator = iter(tensors)
        for key, dtype, shape in entries:
            got_key, t = next(it)
            if got_key != key or t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise RuntimeError(f"internal error: streamed tensor {got_key!r} {t.dtype} {tuple(t.shape)} "
                                   f"does not match header entry {key!r} {dtype} {shape}")
            data = t.detach().to("cpu").contiguous()
            if data.numel():
                writer.put(data)
            t = data = None  # the writer holds it now; do not keep it alive while the next one is produced
        writer = None
        pending.finish()
        os.fsync(fd)
        os.close(fd)
        fd = -1
        replace_file(tmp, path)
    except BaseException:
        if writer is not None:
            writer.queue.put(None)
            writer.join()
        if fd >= 0:
            os.close(fd)
        remove_temp(tmp)
        raise


def save_safetensors_atomic(tensors: dict[str, Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """Serialise `tensors` (made contiguous, on CPU) to canonical safetensors bytes and write them atomically."""
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))
