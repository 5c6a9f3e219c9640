"""lora_core.safetensors_io: every safetensors dtype, unchanged bytes, a portable reader, and the Windows/macOS
paths of the writers (no posix_fallocate, a target another program holds open)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lora_lab.lora_core.files import atomic
from lora_lab.lora_core.files import safetensors_io as sio
from lora_lab.lora_core.errors import LoraFormatError


def _as_bytes(t: torch.Tensor) -> bytes:  # float8/float4 have no ==; compare what is stored
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _every_dtype() -> dict[str, torch.Tensor]:
    raw = torch.arange(24, dtype=torch.uint8).reshape(2, 12)
    out = {}
    for name, dtype in sio.TORCH_DTYPES.items():
        width = torch.empty((), dtype=dtype).element_size()
        out[f"t_{name}"] = (raw[:, : 12 // width * width].contiguous().view(dtype) if dtype != torch.bool
                            else raw % 2 == 1)
    return out


def _fixed() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    ts = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7, "alpha": torch.tensor(4.0),
          "h": torch.arange(5, dtype=torch.bfloat16), "i": torch.arange(3), "b": torch.tensor([True, False, True]),
          "e": torch.zeros(0, 2, dtype=torch.float16), "f8": (torch.arange(4) / 3).to(torch.float8_e4m3fn)}
    return ts, {"ss_b": "1", "a": '{"x": 2}'}


def _header_file(path, entries: dict, data: bytes = b"") -> None:
    head = json.dumps(entries).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


def test_the_table_has_every_dtype_safetensors_defines():
    from safetensors import torch as st_torch

    assert set(sio.DTYPE_BITS) == {"BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "F32", "U64",
                                   "I64", "F64", "C64", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
                                   "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"}
    assert all(sio.TORCH_DTYPES[name] == dtype for name, dtype in st_torch._TYPES.items() if dtype is not None)
    assert {d for d in st_torch._SIZE if d is not None} <= set(sio.DTYPE_NAMES)


def test_bytes_are_unchanged():
    """sha256 of the canonical encoding and of the streaming header, as the code before this module wrote them."""
    ts, md = _fixed()
    assert hashlib.sha256(sio.safetensors_bytes(ts, md)).hexdigest() == \
        "5f4064e313758ca75df34271219c4af46d57828ccbadd5940b219020c891f09f"
    entries = [(k, t.dtype, tuple(t.shape)) for k, t in ts.items()]
    assert hashlib.sha256(sio.header_bytes(entries, md)).hexdigest() == \
        "1a70fbd89f206ff45e6b3eca64e15988380cd4b7e3ef2772fd319e762e7c7a4b"


def test_every_dtype_round_trips_through_both_writers_and_safetensors(tmp_path):
    ts = _every_dtype()
    sio.save_safetensors_atomic(ts, tmp_path / "a.safetensors", {"k": "v"})
    entries = [(k, t.dtype, tuple(t.shape)) for k, t in ts.items()]
    sio.write_streaming(tmp_path / "s.safetensors", entries, {"k": "v"}, iter(ts.items()))
    for name in ("a.safetensors", "s.safetensors"):
        with safe_open(str(tmp_path / name), framework="pt") as f:  # safetensors reads what we wrote
            for k in f.keys():
                got = f.get_tensor(k)
                assert got.dtype == ts[k].dtype and got.shape == ts[k].shape and _as_bytes(got) == _as_bytes(ts[k]), k
        reader = sio.SafetensorsReader(tmp_path / name)
        try:
            assert reader.metadata == {"k": "v"} and sorted(reader.keys()) == sorted(ts)
            for k, t in ts.items():
                got = reader.read(k)
                assert reader.dtype(k) == t.dtype and reader.shape(k) == tuple(t.shape), k
                assert got.dtype == t.dtype and got.shape == t.shape and _as_bytes(got) == _as_bytes(t), k
        finally:
            reader.close()


@pytest.mark.skipif(not hasattr(torch, "float4_e2m1fn_x2"), reason="this torch has no float4")
def test_float4_header_counts_values_torch_counts_pairs(tmp_path):
    t = torch.arange(6, dtype=torch.uint8).reshape(2, 3).view(torch.float4_e2m1fn_x2)
    save_file({"q": t}, tmp_path / "lib.safetensors")  # safetensors' own writer
    header, _ = sio.read_safetensors_header(tmp_path / "lib.safetensors")
    assert header["q"]["dtype"] == "F4" and header["q"]["shape"] == [2, 6]
    reader = sio.SafetensorsReader(tmp_path / "lib.safetensors")
    try:
        assert reader.shape("q") == (2, 3) and _as_bytes(reader.read("q")) == _as_bytes(t)
    finally:
        reader.close()
    (tmp_path / "ours.safetensors").write_bytes(sio.safetensors_bytes({"q": t}))
    assert sio.read_safetensors_header(tmp_path / "ours.safetensors")[0] == header  # same entry, same data
    assert (tmp_path / "ours.safetensors").stat().st_size == (tmp_path / "lib.safetensors").stat().st_size


def test_a_dtype_torch_cannot_hold_names_file_tensor_and_dtype(tmp_path):
    path = tmp_path / "f6.safetensors"
    _header_file(path, {"w": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}, b"\0" * 3)
    with pytest.raises(LoraFormatError, match=r"f6\.safetensors: tensor 'w' has dtype F6_E2M3, which this torch"):
        sio.SafetensorsReader(path)
    _header_file(path, {"w": {"dtype": "F7", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(LoraFormatError, match="corrupt safetensors header entry for 'w'"):
        sio.read_safetensors_header(path)
    _header_file(path, {"w": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, b"\0" * 2)  # odd F4 count
    with pytest.raises(LoraFormatError, match="size does not match"):
        sio.read_safetensors_header(path)


def test_reader_loops_over_short_reads_and_reports_truncation(tmp_path):
    t = torch.arange(1000, dtype=torch.float32)
    save_file({"t": t}, tmp_path / "x.safetensors")
    reader = sio.SafetensorsReader(tmp_path / "x.safetensors")
    real = reader._file

    class Trickle:  # readinto returns at most 7 bytes per call, as a slow or capped read may
        closed = False

        def seek(self, offset):
            real.seek(offset)

        def readinto(self, buf):
            return real.readinto(buf[:7])

    reader._file = Trickle()
    assert torch.equal(reader.read("t"), t)
    reader._file = real
    reader.close()
    with pytest.raises(LoraFormatError, match="read after close"):
        reader.read("t")


def test_threads_can_share_a_reader(tmp_path):
    ts = {f"t{i}": torch.full((257,), float(i)) for i in range(16)}
    save_file(ts, tmp_path / "x.safetensors")
    reader = sio.SafetensorsReader(tmp_path / "x.safetensors")
    bad: list[str] = []

    def work():
        for _ in range(20):
            for k, t in ts.items():
                if not torch.equal(reader.read(k), t):
                    bad.append(k)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    reader.close()
    assert bad == []


def _stream(path, ts):
    sio.write_streaming(path, [(k, t.dtype, tuple(t.shape)) for k, t in ts.items()], {"m": "1"}, iter(ts.items()))


def test_without_posix_fallocate_free_space_is_checked_first(tmp_path, monkeypatch):
    ts, _ = _fixed()
    _stream(tmp_path / "with.safetensors", ts)
    monkeypatch.delattr(os, "posix_fallocate", raising=False)  # Windows and macOS
    _stream(tmp_path / "without.safetensors", ts)
    assert (tmp_path / "with.safetensors").read_bytes() == (tmp_path / "without.safetensors").read_bytes()
    Usage = type(shutil.disk_usage(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 100, 100))

    def never():
        raise AssertionError("no tensor may be produced when the disk is full")
        yield

    entries = [(k, t.dtype, tuple(t.shape)) for k, t in ts.items()]
    with pytest.raises(OSError, match=r"no space left.*full\.safetensors") as error:
        sio.write_streaming(tmp_path / "full.safetensors", entries, None, never())
    assert error.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["with.safetensors", "without.safetensors"]


def test_unsupported_fallocate_falls_back_to_the_free_space_check(tmp_path, monkeypatch):
    calls = []

    def unsupported(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)  # e.g. a network filesystem
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: calls.append(p) or real_usage(p))
    ts, _ = _fixed()
    _stream(tmp_path / "x.safetensors", ts)
    assert calls == [tmp_path] and (tmp_path / "x.safetensors").stat().st_size > 0


def test_replace_retries_while_another_program_holds_the_file(tmp_path, monkeypatch):
    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"old")
    real_replace, waits, fails = os.replace, [], [3]

    def held(src, dst):
        if fails[0]:
            fails[0] -= 1
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", held)
    monkeypatch.setattr(atomic.time, "sleep", waits.append)
    atomic.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and len(waits) == 3 and os.listdir(tmp_path) == ["lora.safetensors"]


def test_replace_gives_up_naming_the_file_and_leaves_it_whole(tmp_path, monkeypatch):
    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"old")
    waits: list[float] = []

    def held(src, dst):
        raise PermissionError(13, "Access is denied")

    monkeypatch.setattr(os, "replace", held)
    monkeypatch.setattr(atomic.time, "sleep", waits.append)
    ts, _ = _fixed()
    for write in (lambda: sio.save_safetensors_atomic(ts, target), lambda: _stream(target, ts)):
        waits.clear()
        with pytest.raises(PermissionError, match=r"lora\.safetensors: cannot replace the file: another program has it open"):
            write()
        assert 0.8 <= sum(waits) <= 1.5
        assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["lora.safetensors"]  # no temp left


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
def test_temp_file_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.atomic_write_bytes(tmp_path / "x.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o640
