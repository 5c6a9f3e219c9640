"""Atomic file writes: a crash, an error or a full disk never leaves a half-written file at the target path.

A temp file beside the target (same filesystem), space reserved first, fsync, then os.replace: the steps every
writer of the pack shares (bytes, safetensors whole or streamed). Only os.chmod and os.replace; os.posix_fallocate
where the platform has it (neither Windows nor macOS), else a look at the free space.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path

REPLACE_WAITS_S = (0.05, 0.1, 0.15, 0.2, 0.25, 0.25)  # about 1 s: antivirus scanners hold a new file a moment


def new_temp_file(path: Path) -> tuple[int, str]:
    """A temp file beside `path` (same filesystem, so os.replace is atomic) with the permissions a plain
    open() would give: mkstemp's 0600 would make saved LoRAs unreadable to other users of a shared ComfyUI."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # by path: os.fchmod is Windows-only from Python 3.13
    except BaseException:
        os.close(fd)
        remove_temp(tmp)
        raise
    return fd, tmp


def remove_temp(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def replace_file(tmp: str, path: Path) -> None:
    """os.replace(tmp, path). On Windows it fails while another program has `path` open: retried for about a
    second, then `tmp` is removed and the error says so; `path` is never left half-written."""
    for wait in (*REPLACE_WAITS_S, None):
        try:
            os.replace(tmp, path)
            return
        except PermissionError as error:
            if wait is None:
                remove_temp(tmp)
                raise PermissionError(errno.EACCES, f"{path}: cannot replace the file: another program has it open "
                                      f"(or it is read-only); close it there and try again") from error
            time.sleep(wait)


def reserve_space(fd: int, path: Path, size: int) -> None:
    """Fail on a full disk before any work: posix_fallocate where there is one (not on Windows or macOS) and
    the filesystem supports it, else a look at the free space."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, 0, size)
            return
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _no_space(path, size) from e
    if shutil.disk_usage(path.parent).free < size:
        raise _no_space(path, size)


def _no_space(path: Path, size: int) -> OSError:
    return OSError(errno.ENOSPC, f"no space left on the device to write {path} ({size} bytes)")


def written_temp(path: Path, data: bytes) -> str:
    """A temp file beside `path` holding `data`, fsynced; removed again if writing fails."""
    fd, tmp = new_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        remove_temp(tmp)
        raise
    return tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file in the same directory, fsync it, then replace `path` with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = written_temp(path, data)
    try:
        replace_file(tmp, path)  # same filesystem -> atomic rename
    except BaseException:
        remove_temp(tmp)
        raise


def write_new_file(path: Path, data: bytes) -> bool:
    """Write `path` only if it does not exist: a temp file hard-linked into place (atomic, refuses an existing
    name). Returns False when a file was there. Where the filesystem has no hard links, an existence check then
    an atomic write."""
    tmp = written_temp(path, data)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (FAT, some network shares)
            if path.exists():
                return False
            replace_file(tmp, path)
        return True
    finally:
        remove_temp(tmp)
