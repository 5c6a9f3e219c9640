"""Matching a model's loaded LoRAs to files (lora_core.base_lora_match) with real safetensors files: files
that share every key are told apart by their tensors, copies are named together, rewritten files are not
claimed, stacked loads of same-keyed files each find their own, extra tensors in a file are allowed."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from lora_lab.lora_core.files.base_lora_match import LoadedLora, identify

PREFIXES = ["lora_unet_a_to_q", "lora_unet_a_to_k"]


def _lora(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for p in PREFIXES:
        out[f"{p}.lora_down.weight"] = torch.randn(4, 8, generator=g)
        out[f"{p}.lora_up.weight"] = torch.randn(8, 4, generator=g)
        out[f"{p}.alpha"] = torch.tensor(4.0)
    return out


def _load(tensors: dict[str, torch.Tensor], strength: float = 1.0, samples: bool = True) -> LoadedLora:
    """What a loader keeps: the keys it read, and per patched weight its names and the adapter's tensors."""
    per_weight = [([p], [tensors[f"{p}.lora_up.weight"], tensors[f"{p}.lora_down.weight"]]) for p in PREFIXES]
    return LoadedLora(strength, set(tensors), per_weight if samples else [])


def _files(tmp_path, **loras) -> dict[str, str]:
    files = {}
    for name, tensors in loras.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        files[f"{name}.safetensors"] = str(tmp_path / f"{name}.safetensors")
    return files


def test_a_same_keyed_file_listed_first_is_not_taken_for_the_source(tmp_path):
    source, decoy = _lora(1), _lora(2)
    files = _files(tmp_path, a_decoy=decoy, source=source)
    assert identify([_load(source, 0.7)], files) == [{"file": "source.safetensors", "strength": 0.7}]


def test_copies_are_named_together_and_rewritten_files_are_not_claimed(tmp_path):
    source = _lora(1)
    files = _files(tmp_path, original=source, original_copy=source)
    assert identify([_load(source, 0.5)], files) == [
        {"file": "original.safetensors", "strength": 0.5, "same_content": ["original_copy.safetensors"]}]
    files = _files(tmp_path, original=_lora(3), original_copy=_lora(4))
    assert identify([_load(source, 0.5)], files) == [{"file": None, "strength": 0.5, "unmatched_keys": 6}]


def test_stacked_loads_of_same_keyed_files_each_find_their_own(tmp_path):
    a, b = _lora(1), _lora(2)
    files = _files(tmp_path, a=a, b=b, c=_lora(3))
    assert identify([_load(b), _load(a)], files) == [{"file": "b.safetensors", "strength": 1.0},
                                                     {"file": "a.safetensors", "strength": 1.0}]


def test_extra_tensors_in_the_file_are_allowed_a_differing_one_is_not(tmp_path):
    source = _lora(1)
    with_bias = dict(source, **{f"{PREFIXES[0]}.diff_b": torch.ones(8)})
    files = _files(tmp_path, with_bias=with_bias)
    assert identify([_load(source)], files)[0]["file"] == "with_bias.safetensors"
    changed = dict(source, **{f"{PREFIXES[1]}.lora_up.weight": source[f"{PREFIXES[1]}.lora_up.weight"] + 1e-3})
    files = _files(tmp_path, changed=changed)
    assert identify([_load(source)], files)[0]["file"] is None


def test_dtype_of_file_and_adapter_may_differ(tmp_path):
    source = {k: v.to(torch.bfloat16) for k, v in _lora(1).items()}
    files = _files(tmp_path, decoy={k: v.to(torch.bfloat16) for k, v in _lora(2).items()}, source=source)
    adapter = {k: v.float() for k, v in source.items()}  # a loader may hold them in another dtype
    assert identify([_load(adapter)], files)[0]["file"] == "source.safetensors"


def test_zero_strength_is_not_recorded_and_undecidable_ties_say_so(tmp_path):
    a, b = _lora(1), _lora(2)
    files = _files(tmp_path, a=a, b=b)
    assert identify([_load(a, 0.0)], files) == []
    assert identify([_load(a, samples=False)], files) == [
        {"file": None, "strength": 1.0, "candidates": ["a.safetensors", "b.safetensors"]}]
    assert identify([_load(a)], {}) == [{"file": None, "strength": 1.0, "unmatched_keys": 6}]


def test_a_bypass_load_is_found_and_says_it_is_bypass(tmp_path):
    source, other = _lora(1), _lora(2)
    files = _files(tmp_path, other=other, source=source)
    bypass = _load(source, 0.6)
    bypass.mode = "bypass"
    assert identify([bypass, _load(other, 0.9)], files) == [
        {"file": "source.safetensors", "strength": 0.6, "mode": "bypass"},
        {"file": "other.safetensors", "strength": 0.9}]
