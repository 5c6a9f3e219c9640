"""Content-addressed cache of encodings (latents, caption conditionings): in memory and in a folder.

    <folder>/CACHEDIR.TAG                        marks the folder as LoRA Lab's cache (backup tools skip it too)
    <folder>/<kind>/<key[:2]>/<key>.safetensors  one encoding: tensors + JSON structure in the header

The key (cache_keys.make_key) names every input of the encoding, so entries are never invalidated, only
missed. Files are written atomically; a file that cannot be read, or whose header names another key, is
reported and re-encoded, never trusted. The memory layer is shared by the whole process (ComfyUI runs
many prompts in one), bounded in bytes, least recently used first out.

Clearing deletes only what the cache can prove it wrote: the folder must carry the cache's tag (written when
the cache makes the folder, or takes an empty one), and each file's header must name the format and its key.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..files.safetensors_io import save_safetensors_atomic
from ..errors import DatasetError
from ..files.tensor_tree import NotStorable, pack, unpack

FORMAT = "lora_lab.encoding/2"  # /1 stored its trees in an earlier layout: such entries are a miss, replaced
_OURS = "lora_lab.encoding/"
CACHEDIR_TAG = "CACHEDIR.TAG"
_TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
             "# This file marks a LoRA Lab encoding cache (latents, caption encodings); it can be deleted.\n")
DEFAULT_MEMORY_BYTES = int(float(os.environ.get("LORA_LAB_MEMORY_CACHE_MB", "2048")) * 2**20)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 64


class MemoryStore:
    """Process-wide LRU of encodings, at most `limit` bytes of tensors."""

    def __init__(self, limit: int = DEFAULT_MEMORY_BYTES):
        self.limit = limit
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: Any) -> None:
        size = _nbytes(value)
        if size > self.limit:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= old[1] if old else 0
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.limit:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


SHARED_MEMORY = MemoryStore()


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    encoded: int = 0
    corrupt: int = 0

    def __str__(self) -> str:
        return (f"{self.encoded} encoded, {self.memory_hits + self.disk_hits} from cache "
                f"({self.disk_hits} from disk)" + (f", {self.corrupt} corrupt re-encoded" if self.corrupt else ""))


@dataclass
class EncodingCache:
    """get_or_encode(kind, key, encode): the cached value, or encode() stored in memory and on disk."""

    folder: Path | None = None
    memory: MemoryStore | None = field(default_factory=lambda: SHARED_MEMORY)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, CacheStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.folder is not None:
            self.folder = Path(self.folder).expanduser()
            ensure_writable(self.folder)

    def get_or_encode(self, kind: str, key: str, encode: Callable[[], Any], disk: bool = True) -> Any:
        """disk=False: memory only (for values used once or twice, such as per-step shuffled captions)."""
        stats = self.stats.setdefault(kind, CacheStats())
        full_key = f"{kind}/{key}"
        if self.memory is not None and (value := self.memory.get(full_key)) is not None:
            stats.memory_hits += 1
            return value
        value = self._read(kind, key, stats) if disk else None
        if value is not None:
            stats.disk_hits += 1
        else:
            value = encode()
            stats.encoded += 1
            if disk:
                self._write(kind, key, value)
        if self.memory is not None:
            self.memory.put(full_key, value)
        return value

    def path(self, kind: str, key: str) -> Path:
        assert self.folder is not None
        return self.folder / kind / key[:2] / f"{key}.safetensors"

    def _read(self, kind: str, key: str, stats: CacheStats) -> Any | None:
        if self.folder is None:
            return None
        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            return _load(path, key)
        except _Outdated:  # written by an earlier version in its own layout: encoded again and replaced
            return None
        except Exception as error:  # any unreadable file: say so and encode again (the write replaces it)
            stats.corrupt += 1
            self.warnings.append(f"Cache file {path} is corrupt ({_reason(error)}); encoded again")
            return None

    def _write(self, kind: str, key: str, value: Any) -> None:
        if self.folder is None:
            return
        try:
            tensors, structure = pack(value)
        except NotStorable as error:
            note = f"{kind} encodings are kept in memory only: {error}"
            if note not in self.warnings:
                self.warnings.append(note)
            return
        if not tensors:
            tensors = {"_": torch.zeros(0)}  # safetensors needs at least one tensor
        path = self.path(kind, key)
        try:
            save_safetensors_atomic(tensors, path, {"format": FORMAT, "key": key, "tree": structure})
        except OSError as error:  # e.g. the disk filled up mid-run: training can go on from memory
            self.warnings.append(f"Cannot write to the cache folder {self.folder} ({_reason(error)}); "
                                 "the rest of this run is cached in memory only")
            self.folder = None

    def summary(self) -> str:
        where = str(self.folder) if self.folder else "memory only"
        parts = [f"{kind}: {stats}" for kind, stats in sorted(self.stats.items())]
        return f"cache ({where}): " + ("; ".join(parts) if parts else "unused")


class _Outdated(Exception):
    """A cache entry of an earlier format."""


def _load(path: Path, key: str) -> Any:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format", "").startswith(_OURS) and meta.get("format") != FORMAT and meta.get("key") == key:
            raise _Outdated
        if meta.get("format") != FORMAT or meta.get("key") != key:
            raise ValueError(f"its header names {meta.get('key')!r}, format {meta.get('format')!r}")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return unpack(tensors, meta["tree"])


def ensure_writable(folder: Path) -> None:
    """Create the cache folder with its tag (or take an empty one, or one the cache made) or raise a DatasetError
    naming it and why: a folder holding other files is never taken, so clearing can only ever touch the cache."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tag = folder / CACHEDIR_TAG
        if not is_cache_folder(folder):
            if any(folder.iterdir()):
                raise DatasetError(f"The cache folder {folder} already holds files that are not a LoRA Lab cache: "
                                   "choose a new or empty folder for cache_folder")
            tag.write_text(_TAG_TEXT)
        probe = folder / f".write_test_{os.getpid()}_{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise DatasetError(
            f"The cache folder {folder} is not writable ({_reason(error)}): choose another cache_folder, "
            "or leave it empty to cache in memory only") from error


def is_cache_folder(folder: Path) -> bool:
    """The folder carries the tag this cache writes (its text names LoRA Lab, not only the CACHEDIR standard)."""
    try:
        return (folder / CACHEDIR_TAG).read_text() == _TAG_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


@dataclass
class CacheUsage:
    folder: Path
    files: int = 0
    bytes: int = 0
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (files, bytes)

    def __str__(self) -> str:
        kinds = ", ".join(f"{k}: {_files(n)}, {_size(b)}" for k, (n, b) in sorted(self.by_kind.items()))
        return f"{self.folder}: {_files(self.files)}, {_size(self.bytes)}" + (f" ({kinds})" if kinds else "")


def _entries(folder: Path) -> list[tuple[str, Path]]:
    """(kind, path) of every file where this cache puts entries and temp files (clear_cache still checks each)."""
    found = []
    for kind_dir in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        for shard in sorted(p for p in kind_dir.iterdir() if p.is_dir() and len(p.name) == 2):
            for path in sorted(shard.iterdir()):
                is_entry = path.suffix == ".safetensors" and path.stem.startswith(shard.name)
                is_temp = path.name.startswith(".") and path.name.endswith(".tmp")
                if path.is_file() and (is_entry or is_temp):
                    found.append((kind_dir.name, path))
    return found


def cache_usage(folder: str | Path) -> CacheUsage:
    """How many cache files and bytes `folder` holds, per kind (latents, text, ...)."""
    usage = CacheUsage(Path(folder).expanduser())
    for kind, path in _entries(usage.folder):
        size = path.stat().st_size
        n, b = usage.by_kind.get(kind, (0, 0))
        usage.by_kind[kind] = (n + 1, b + size)
        usage.files += 1
        usage.bytes += size
    return usage


@dataclass
class Cleared:
    freed: CacheUsage
    left: list[Path] = field(default_factory=list)  # files where entries go that the cache cannot prove it wrote

    def __str__(self) -> str:
        text = str(self.freed)
        if self.left:
            shown = ", ".join(str(p) for p in self.left[:5]) + (", ..." if len(self.left) > 5 else "")
            text += f"; left {_files(len(self.left))} the cache did not write: {shown}"
        return text


def clear_cache(folder: str | Path, memory: MemoryStore | None = SHARED_MEMORY) -> Cleared:
    """Delete the cache's own files under `folder` (tagged folder, own header in each) and the memory layer;
    returns what was freed and what was left. A folder without the cache's tag is refused: nothing is deleted."""
    folder = Path(folder).expanduser()
    if not is_cache_folder(folder):
        raise DatasetError(f"{folder} is not a LoRA Lab encoding cache (it has no {CACHEDIR_TAG} written by the "
                           "cache): nothing was deleted")
    cleared = Cleared(CacheUsage(folder))
    for kind, path in _entries(folder):
        if not _wrote(path):
            cleared.left.append(path)
            continue
        size = path.stat().st_size
        n, b = cleared.freed.by_kind.get(kind, (0, 0))
        cleared.freed.by_kind[kind] = (n + 1, b + size)
        cleared.freed.files += 1
        cleared.freed.bytes += size
        path.unlink(missing_ok=True)
    for kind_dir in [p for p in folder.iterdir() if p.is_dir()]:
        for shard in [p for p in kind_dir.iterdir() if p.is_dir()]:
            _rmdir_if_empty(shard)
        _rmdir_if_empty(kind_dir)
    if memory is not None:
        memory.clear()
    return cleared


def _wrote(path: Path) -> bool:
    """The file's header names this cache's format and the key its name carries (a leftover temp file never
    does: its key is the entry's, read from the name between the leading dot and '.safetensors')."""
    from safetensors import safe_open

    key = path.name[1:].split(".safetensors", 1)[0] if path.name.startswith(".") else path.stem
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable: not provably ours
        return False
    return str(meta.get("format", "")).startswith(_OURS) and meta.get("key") == key


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # not empty: something that is not ours lives there


def _files(n: int) -> str:
    return f"{n} file" + ("" if n == 1 else "s")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
