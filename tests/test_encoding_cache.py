"""The content-addressed encoding cache: memory and disk layers, keys, corrupt files, unwritable folders,
atomic writes, size report and clear, and the tensor-tree format it stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lora_lab.lora_core.cache.keys import file_digest, make_key, weights_fingerprint
from lora_lab.lora_core.cache.encoding_cache import EncodingCache, MemoryStore, cache_usage, clear_cache
from lora_lab.lora_core.errors import DatasetError
from lora_lab.lora_core.files.tensor_tree import NotStorable, pack, unpack


class Counting:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def test_disk_layer_serves_a_new_process(tmp_path):
    latent = torch.randn(1, 4, 8, 8)
    first = Counting(latent)
    cache = EncodingCache(tmp_path, memory=MemoryStore())
    assert torch.equal(cache.get_or_encode("latents", "ab" * 20, first), latent)
    again = EncodingCache(tmp_path, memory=MemoryStore())  # a fresh memory: only the disk can answer
    second = Counting(None)
    assert torch.equal(again.get_or_encode("latents", "ab" * 20, second), latent)
    assert (first.calls, second.calls) == (1, 0)
    assert again.stats["latents"].disk_hits == 1 and cache.stats["latents"].encoded == 1
    assert (tmp_path / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_memory_layer_is_shared_and_bounded():
    memory = MemoryStore(limit=3 * 64 * 4)  # three 64-float tensors
    a = EncodingCache(None, memory=memory)
    b = EncodingCache(None, memory=memory)
    a.get_or_encode("latents", "k1", lambda: torch.zeros(64))
    counter = Counting(torch.ones(64))
    b.get_or_encode("latents", "k1", counter)
    assert counter.calls == 0 and b.stats["latents"].memory_hits == 1
    for k in ("k2", "k3", "k4"):
        a.get_or_encode("latents", k, lambda: torch.zeros(64))
    assert memory.get("latents/k1") is None and memory.get("latents/k4") is not None  # least recent out


def test_disk_false_keeps_it_in_memory_only(tmp_path):
    cache = EncodingCache(tmp_path, memory=MemoryStore())
    cache.get_or_encode("text", "cd" * 20, lambda: torch.ones(3), disk=False)
    assert cache_usage(tmp_path).files == 0


def test_conditioning_trees_round_trip(tmp_path):
    cond = [[torch.randn(1, 77, 32, dtype=torch.bfloat16), {"pooled_output": torch.randn(1, 32), "guidance": 3.5,
                                                            "attention_mask": None, "name": "x", "flag": True}]]
    cache = EncodingCache(tmp_path, memory=MemoryStore())
    cache.get_or_encode("text", "ef" * 20, lambda: cond)
    back = EncodingCache(tmp_path, memory=MemoryStore()).get_or_encode("text", "ef" * 20, lambda: None)
    assert isinstance(back, list) and isinstance(back[0][1], dict)
    assert torch.equal(back[0][0], cond[0][0]) and back[0][0].dtype == torch.bfloat16
    assert torch.equal(back[0][1]["pooled_output"], cond[0][1]["pooled_output"])
    assert {k: v for k, v in back[0][1].items() if k != "pooled_output"} == {
        "guidance": 3.5, "attention_mask": None, "name": "x", "flag": True}


def test_unstorable_values_stay_in_memory_with_a_note(tmp_path):
    cache = EncodingCache(tmp_path, memory=MemoryStore())
    value = [[torch.ones(2), {"hooks": object()}]]
    assert cache.get_or_encode("text", "aa" * 20, lambda: value) is value
    assert cache_usage(tmp_path).files == 0
    assert any("memory only" in w and "object" in w for w in cache.warnings)
    with pytest.raises(NotStorable):
        pack({(1, 2): torch.ones(1)})
    with pytest.raises(NotStorable):
        pack({"a": 1.5j})


def test_tree_pack_keeps_tuples_lists_int_keys_and_nan():
    tensors, structure = pack((1, [2.5, float("nan")], {"a": torch.arange(3), 7: None}))
    out = unpack(tensors, structure)
    assert out[0] == 1 and isinstance(out, tuple) and out[1][0] == 2.5 and out[1][1] != out[1][1]
    assert torch.equal(out[2]["a"], torch.arange(3)) and list(out[2]) == ["a", 7] and out[2][7] is None


def test_an_entry_of_an_earlier_cache_format_is_a_plain_miss_and_replaced(tmp_path):
    """Entries written by an earlier version (its own tree layout) are encoded again, without a corrupt warning."""
    from lora_lab.lora_core.files.safetensors_io import save_safetensors_atomic

    cache = EncodingCache(tmp_path, memory=MemoryStore())
    key = "ab" * 20
    save_safetensors_atomic({"t": torch.zeros(2)}, cache.path("latents", key),
                            {"format": "lora_lab.encoding/1", "key": key, "tree": '{"T":"t"}'})
    encode = Counting(torch.ones(2))
    assert torch.equal(cache.get_or_encode("latents", key, encode), torch.ones(2))
    assert encode.calls == 1 and cache.warnings == [] and cache.stats["latents"].corrupt == 0
    fresh = EncodingCache(tmp_path, memory=MemoryStore())
    assert torch.equal(fresh.get_or_encode("latents", key, Counting(torch.zeros(2))), torch.ones(2))  # replaced


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_key", "empty"])
def test_corrupt_file_is_re_encoded_with_a_warning(tmp_path, damage):
    key = "12" * 20
    EncodingCache(tmp_path, memory=MemoryStore()).get_or_encode("latents", key, lambda: torch.ones(4, 4))
    path = EncodingCache(tmp_path, memory=MemoryStore()).path("latents", key)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid file that belongs to another key (copied or renamed by hand)
        other = "34" * 20
        EncodingCache(tmp_path, memory=MemoryStore()).get_or_encode("latents", other, lambda: torch.zeros(4, 4))
        path.write_bytes(EncodingCache(tmp_path, memory=MemoryStore()).path("latents", other).read_bytes())
    cache = EncodingCache(tmp_path, memory=MemoryStore())
    encode = Counting(torch.full((4, 4), 7.0))
    assert torch.equal(cache.get_or_encode("latents", key, encode), torch.full((4, 4), 7.0))
    assert encode.calls == 1 and cache.stats["latents"].corrupt == 1
    assert any(str(path) in w and "corrupt" in w for w in cache.warnings)
    # the file was replaced by a good one
    fresh = EncodingCache(tmp_path, memory=MemoryStore())
    assert torch.equal(fresh.get_or_encode("latents", key, Counting(None)), torch.full((4, 4), 7.0))


def test_unwritable_cache_folder_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DatasetError, match="not writable") as err:
        EncodingCache(blocker / "cache")
    assert str(blocker / "cache") in str(err.value)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    folder = tmp_path / "ro"
    folder.mkdir()
    monkeypatch.setattr(Path, "write_bytes", denied)  # chmod does not stop root: simulate the refusal
    with pytest.raises(DatasetError, match="Permission denied") as err:
        EncodingCache(folder)
    assert str(folder) in str(err.value)


def test_failed_write_leaves_no_file_behind_and_the_run_goes_on(tmp_path, monkeypatch):
    cache = EncodingCache(tmp_path, memory=MemoryStore())
    import lora_lab.lora_core.files.atomic as atomic

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    assert torch.equal(cache.get_or_encode("latents", "56" * 20, lambda: torch.ones(8)), torch.ones(8))
    assert any("No space left" in w and str(tmp_path) in w for w in cache.warnings)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "CACHEDIR.TAG"]
    assert leftovers == []
    encode = Counting(torch.zeros(2))
    cache.get_or_encode("latents", "57" * 20, encode)  # later entries are not even tried on disk
    assert encode.calls == 1 and cache.folder is None


def test_usage_and_clear_touch_only_cache_files(tmp_path):
    cache = EncodingCache(tmp_path, memory=MemoryStore())
    for i in range(3):
        cache.get_or_encode("latents", f"{i:02d}" * 20, lambda: torch.ones(256))
    cache.get_or_encode("text", "ff" * 20, lambda: torch.ones(16))
    mine = tmp_path / "notes.txt"
    mine.write_text("user file")
    stray = tmp_path / "latents" / "00" / "holiday.jpg"
    stray.write_bytes(b"jpg")

    usage = cache_usage(tmp_path)
    assert usage.files == 4 and usage.by_kind["latents"][0] == 3 and usage.by_kind["text"][0] == 1
    assert usage.bytes == sum(p.stat().st_size for p in tmp_path.rglob("*.safetensors"))
    assert "4 files" in str(usage) and str(tmp_path) in str(usage)

    memory = MemoryStore()
    memory.put("latents/x", torch.ones(1))
    cleared = clear_cache(tmp_path, memory=memory)
    assert cleared.freed.files == 4 and cleared.left == [] and cache_usage(tmp_path).files == 0
    assert mine.exists() and stray.exists() and memory.get("latents/x") is None
    assert not (tmp_path / "text").exists()


def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_clear_deletes_only_files_whose_header_proves_them_the_caches(tmp_path):
    from safetensors.torch import save_file

    cache = EncodingCache(tmp_path, memory=MemoryStore())
    key = "cd" * 20
    cache.get_or_encode("latents", key, lambda: torch.ones(4))
    foreign = tmp_path / "latents" / "cd" / "cd_not_ours.safetensors"  # where entries go, named like one
    save_file({"x": torch.zeros(2)}, str(foreign), metadata={"format": "someone.else/1", "key": "cd_not_ours"})
    forged = tmp_path / "latents" / "cd" / ("cd" + "0" * 38 + ".safetensors")  # our format, another key
    save_file({"x": torch.zeros(2)}, str(forged), metadata={"format": "lora_lab.encoding/1", "key": key})
    crashed_temp = tmp_path / "latents" / "cd" / f".{key}.safetensors.abc123.tmp"
    crashed_temp.write_bytes(b"\x10\x00")  # a write that died in its header: not provably ours
    kept = {p: p.read_bytes() for p in (foreign, forged, crashed_temp)}

    cleared = clear_cache(tmp_path, memory=MemoryStore())
    assert cleared.freed.files == 1 and not cache.path("latents", key).exists()
    assert sorted(cleared.left) == sorted(kept) and all(p.read_bytes() == b for p, b in kept.items())
    assert "left 3 files the cache did not write" in str(cleared) and str(foreign) in str(cleared)


def test_clear_refuses_a_folder_the_cache_did_not_make(tmp_path):
    from lora_lab.lora_core.errors import DatasetError

    shard = tmp_path / "latents" / "cd"
    shard.mkdir(parents=True)
    (shard / "cd_photo.safetensors").write_bytes(b"not a cache file")
    (tmp_path / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n# another tool\n")
    before = _listing(tmp_path)
    with pytest.raises(DatasetError, match="not a LoRA Lab encoding cache.*nothing was deleted"):
        clear_cache(tmp_path, memory=MemoryStore())
    assert _listing(tmp_path) == before


def test_the_cache_never_takes_a_folder_holding_other_files(tmp_path):
    from lora_lab.lora_core.errors import DatasetError

    (tmp_path / "holiday.jpg").write_bytes(b"jpg")
    with pytest.raises(DatasetError, match="already holds files that are not a LoRA Lab cache"):
        EncodingCache(tmp_path, memory=MemoryStore())
    assert not (tmp_path / "CACHEDIR.TAG").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    EncodingCache(empty, memory=MemoryStore())  # an empty folder is taken and tagged
    EncodingCache(empty, memory=MemoryStore())  # and taken again once it holds the cache
    assert (empty / "CACHEDIR.TAG").is_file()


def test_keys_change_with_every_input(tmp_path):
    base = make_key("latent", "digest", [0, 1], {"crop": [3, 4]}, False, "vae")
    assert base == make_key("latent", "digest", [0, 1], {"crop": [3, 4]}, False, "vae")
    for changed in [("digest2", [0, 1], {"crop": [3, 4]}, False, "vae"), ("digest", [0, 2], {"crop": [3, 4]}, False, "vae"),
                    ("digest", [0, 1], {"crop": [3, 5]}, False, "vae"), ("digest", [0, 1], {"crop": [3, 4]}, True, "vae"),
                    ("digest", [0, 1], {"crop": [3, 4]}, False, "vae2")]:
        assert make_key("latent", *changed) != base
    assert make_key("text", "a cat", "clip") != make_key("latent", "a cat", "clip")
    (tmp_path / "a").write_bytes(b"x" * 3_000_000)
    (tmp_path / "b").write_bytes(b"x" * 2_999_999 + b"y")
    assert file_digest(tmp_path / "a") != file_digest(tmp_path / "b")


def test_weights_fingerprint_sees_any_real_change():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.Linear(300, 4))
    fp = weights_fingerprint(model.state_dict().items())
    assert fp == weights_fingerprint(model.state_dict().items())
    tuned = {k: v + 1e-3 * torch.randn_like(v) for k, v in model.state_dict().items()}
    assert weights_fingerprint(tuned.items()) != fp
    half = {k: v.half() for k, v in model.state_dict().items()}
    assert weights_fingerprint(half.items()) != fp
    assert weights_fingerprint(model.state_dict().items(), extra={"dtype": "fp16"}) != fp
    renamed = {f"x.{k}": v for k, v in model.state_dict().items()}
    assert weights_fingerprint(renamed.items()) != fp



def test_cache_command_reports_and_clears(tmp_path, capsys):
    from lora_lab.__main__ import main

    cache = EncodingCache(tmp_path, memory=MemoryStore())
    cache.get_or_encode("latents", "77" * 20, lambda: torch.ones(100))
    assert main(["cache", str(tmp_path)]) == 0
    assert "1 file," in capsys.readouterr().out and cache_usage(tmp_path).files == 1
    assert main(["cache", str(tmp_path), "--clear"]) == 0
    assert "cleared" in capsys.readouterr().out and cache_usage(tmp_path).files == 0
    assert main(["cache", str(tmp_path / "missing")]) == 2  # refused
    assert "not a folder" in capsys.readouterr().err
