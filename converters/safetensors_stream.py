"""Write a safetensors file tensor by tensor: header from shapes first, then each tensor's bytes; atomic replace."""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
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
        self.fd, self.queue, self.error = fd, queue.Queue(maxsize=depth), None

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


def write_streaming(path: str | os.PathLike, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                    metadata: dict[str, str] | None, tensors: Iterable[tuple[str, Tensor]], depth: int = 4) -> None:
    """`tensors` must yield exactly `entries`, in order. A temp file is os.replace'd onto `path` only on success.

    Space for the whole file is reserved first (a full disk fails before any work), tensors are written from
    a second thread as they are produced (at most `depth` wait in memory), and the file is fsync'ed once at the end.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = header_bytes(entries, metadata)
    total = len(header) + sum(_nbytes(shape, dtype) for _, dtype, shape in entries)
    fd, tmp = new_temp_file(path)
    writer = None
    try:
        try:
            os.posix_fallocate(fd, 0, total)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            # filesystems without fallocate support: plain writes
        _write_all(fd, torch.frombuffer(bytearray(header), dtype=torch.uint8))
        writer = _Writer(fd, depth)
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
        writer, pending = None, writer
        pending.finish()
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            writer.queue.put(None)
            writer.join()
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
