"""Generated from the family tables: for every fused layer of every family, every non-empty subset of its parts,
without DoRA and with each DoRA layout, converted to ComfyUI form through the file path and the in-memory path:

  * both paths give the same tensors, bit for bit;
  * every module's delta equals the source's (fp32 tolerance), missing parts stay zero;
  * where a rule cannot convert a subset, exactly its keys are reported with a rule's sentence, never an
    internal error; and a fused ComfyUI output converts back to diffusers with the same deltas.
"""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from convert_deltas import assert_same_deltas, module_deltas
from lora_lab.converters import convert_file, convert_state_dict
from lora_lab.converters.families import FAMILIES
from lora_lab.lora_core.errors import LoraFormatError

IN, UNIT, RANK = 8, 4, 2
RULE_WORDS = ("DoRA", "no diffusers", "diffusers/PEFT")  # every reason a rule may give here


def _fused_layers():
    seen = set()
    for family in FAMILIES.values():
        for rule in family.rules:
            if rule.fused and (family.name, rule.original) not in seen:
                seen.add((family.name, rule.original))
                yield pytest.param(family, rule, id=f"{family.name}:{rule.original}")


def _fill(template: str) -> str:
    return template.replace("{i}", "1").replace("{j}", "0")


def _lora(family, rule, subset, dora, seed) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k in subset:
        base = f"{family.diffusers_prefix}.{_fill(rule.parts[k])}"
        rows = UNIT * rule.ratios[k]
        sd[f"{base}.lora_A.weight"] = torch.randn(RANK, IN, generator=g)
        sd[f"{base}.lora_B.weight"] = torch.randn(rows, RANK, generator=g)
        sd[f"{base}.alpha"] = torch.tensor(float(1 + k))  # parts with different scales
        if dora == "magnitude":  # PEFT: per output row
            sd[f"{base}.lora_magnitude_vector"] = torch.rand(rows, generator=g) + 0.5
        elif dora == "input_axis":  # OneTrainer / LyCORIS default: per input column
            sd[f"{base}.dora_scale"] = torch.rand(1, IN, generator=g) + 0.5
    return sd


@pytest.mark.parametrize("dora", [None, "magnitude", "input_axis"])
@pytest.mark.parametrize("family, rule", list(_fused_layers()))
def test_every_subset_of_parts(tmp_path, family, rule, dora):
    n, converted = len(rule.parts), 0
    for size in range(1, n + 1):
        for subset in itertools.combinations(range(n), size):
            sd = _lora(family, rule, subset, dora, seed=zlib.crc32(f"{rule.original}{subset}".encode()))
            src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
            save_file(sd, src)
            memory, meta, report = convert_state_dict(sd, None, "comfyui", arch=family.name)
            if report.unmatched:
                assert {u.key for u in report.unmatched} == set(sd), report
                assert all(any(w in u.reason for w in RULE_WORDS) for u in report.unmatched), report
                assert not memory
                # the file path gives the same verdict (a rule's reason, never an internal error), writes nothing
                with pytest.raises(LoraFormatError, match="nothing to write") as refused:
                    convert_file(src, dst, "comfyui", arch=family.name, overwrite=True)
                assert report.unmatched[0].reason in str(refused.value) and not dst.exists()
                continue
            convert_file(src, dst, "comfyui", arch=family.name, overwrite=True)
            streamed = load_file(dst)
            assert set(streamed) == set(memory)
            assert all(streamed[k].dtype == memory[k].dtype and torch.equal(streamed[k], memory[k]) for k in memory)
            converted += 1
            before = module_deltas(sd, arch=family.name)
            assert assert_same_deltas(before, module_deltas(memory, meta, arch=family.name)) == size
            # toward diffusers: a fused layer goes back to its parts exactly (missing parts: zero), and so do DoRA
            # slices; PEFT has no input-axis DoRA, so those are listed with the reason, every key of them
            back, back_meta, back_report = convert_state_dict(memory, meta, "diffusers", arch=family.name)
            if report.sliced and dora == "input_axis":
                assert {u.key for u in back_report.unmatched} == set(memory) and not back, back_report
                assert all("input-axis" in u.reason for u in back_report.unmatched)
            else:
                assert not back_report.unmatched, back_report
                assert assert_same_deltas(before, module_deltas(back, back_meta, arch=family.name)) == size
            dst.unlink()
    # without DoRA every subset converts; with DoRA, at least the complete set does (or each part, per slice)
    assert converted == 2 ** n - 1 if dora is None or family.slice_prefix else converted >= (dora == "magnitude")


def test_families_without_slices_cannot_fuse_input_axis_dora():
    """Honest reasons where ComfyUI has no per-part key (e.g. HunyuanVideo's token refiner qkv)."""
    family = FAMILIES["hunyuan_video"]
    rule = next(r for r in family.rules if r.original.endswith("self_attn.qkv"))
    _, _, report = convert_state_dict(_lora(family, rule, (0, 1, 2), "input_axis", 0), None, "comfyui",
                                      arch="hunyuan_video")
    assert report.unmatched and all("input-axis" in u.reason for u in report.unmatched)
