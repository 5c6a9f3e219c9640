"""Merge several LoRAs (any supported formats, one model family) into one LoRA.

Exact by default: sum_i w_i B_i A_i = [w_1 B_1 | w_2 B_2 | ...] [A_1; A_2; ...], so the ranks add up and each
weight (and each input's own alpha/rank scale) is folded into its block of B. With a rank, the sum is truncated by
its SVD instead, and each module's relative error is reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..lora_core.errors import LoraFormatError
from .combine_report import CombineReport, ModuleResult
from .conversion_error import ConversionError
from .convert import DTYPES, check_output_path
from .low_rank import as_module, factors, relative_error, stack, svd, truncate
from .lora_modules import LoraModules, read_lora_modules, write_lora
from .module_weights import ModuleWeights
from .plan import OutModule
from .report import UnmatchedKey


def parse_weighted(spec: str, what: str = "weight") -> tuple[Path, float]:
    """'A.safetensors:0.8' -> (A.safetensors, 0.8); no ':<number>' suffix means 1.0."""
    head, sep, tail = str(spec).rpartition(":")
    if sep:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(spec), 1.0


def module_label(m: OutModule) -> str:
    name = m.part or m.name
    return name if m.component == "model" else f"{m.component}:{name}"


def _has_dora(m: ModuleWeights) -> bool:
    return "magnitude" in m.tensors or "dora_scale" in m.tensors


def _dtype_of(m: ModuleWeights) -> torch.dtype:
    return next(t.dtype for t in m.tensors.values() if t.is_floating_point())


def merge_module(weighted: list[tuple[float, ModuleWeights]], rank: int | None,
                 dtype: torch.dtype | None) -> tuple[ModuleWeights, int | None, int | None, float]:
    """(merged module, rank in, rank out, relative error) for one module present in one or more inputs."""
    dtype = dtype or _dtype_of(weighted[0][1])
    if any(_has_dora(m) for _, m in weighted):
        if len(weighted) == 1 and weighted[0][0] == 1.0 and rank is None:
            return weighted[0][1], weighted[0][1].rank, weighted[0][1].rank, 0.0
        raise ConversionError("DoRA modules cannot be merged, weighted or re-ranked exactly: their change depends on "
                              "the base weight")
    biases = [w * m.tensors["diff_b"].float() for w, m in weighted if "diff_b" in m.tensors]
    diff_b = sum(biases) if biases else None
    terms = [(w, f) for w, f in ((w, factors(m)) for w, m in weighted) if f is not None]
    if not terms:
        return ModuleWeights("diff", {"diff_b": diff_b.to(dtype)}), None, None, 0.0
    total = stack(terms)
    if rank is None:
        return as_module(total, dtype, diff_b), total.rank, total.rank if total.down is not None else None, 0.0
    u, s, vh = svd(total)
    k = min(rank, len(s))
    return as_module(truncate(u, s, vh, k, total.in_shape), dtype, diff_b), total.rank, k, relative_error(s, k)


def _read_inputs(inputs: list[tuple[Path, float]], arch: str | None, side: str) -> list[tuple[float, LoraModules]]:
    loras: list[tuple[float, LoraModules]] = []
    for path, weight in inputs:
        family = arch or (loras[0][1].family.name if loras else None)
        lora = read_lora_modules(path, family, side)
        if not lora.modules:
            raise LoraFormatError(f"{path}: none of its modules belong to a {lora.family.name} model, like the first "
                                  f"input's (a LoRA for another model?)")
        loras.append((weight, lora))
    return loras


def merge_loras(inputs: list[tuple[str | os.PathLike, float]], output: str | os.PathLike, rank: int | None = None,
                to: str = "comfyui", arch: str | None = None, dtype: str | None = None,
                overwrite: bool = False) -> CombineReport:
    inputs = [(Path(p), float(w)) for p, w in inputs]
    output = Path(output)
    if len(inputs) < 1:
        raise LoraFormatError("merge: name at least one LoRA (path:weight)")
    if rank is not None and rank < 1:
        raise LoraFormatError(f"merge: --rank must be at least 1 (got {rank})")
    if dtype not in DTYPES:
        raise LoraFormatError(f"unknown dtype {dtype!r}; choose keep, fp16, bf16 or fp32")
    for path, _ in inputs:
        check_output_path(path, output, overwrite)
    loras = _read_inputs(inputs, arch, "diffusers" if to == "diffusers" else "comfyui")
    family = loras[0][1].family
    groups: dict[tuple, list[tuple[float, OutModule]]] = {}
    for weight, lora in loras:
        for m in lora.modules:
            groups.setdefault((m.component, m.name, m.part), []).append((weight, m))
    report = CombineReport("merge", [f"{p.name}:{w:g}" for p, w in inputs], family.name, to,
                           unmatched=[u for _, lora in loras for u in lora.unconverted],
                           dropped=[u for _, lora in loras for u in lora.dropped])
    merged: list[OutModule] = []
    with torch.no_grad():
        for entries in groups.values():
            first = entries[0][1]
            try:
                weights, r_in, r_out, error = merge_module([(w, m.weights) for w, m in entries], rank, DTYPES[dtype])
            except ConversionError as e:
                report.unmatched.append(UnmatchedKey(module_label(first), str(e)))
                continue
            merged.append(OutModule(first.component, first.name, weights, first.part, first.rows))
            report.modules.append(ModuleResult(module_label(first), r_in, r_out, error,
                                               f"{len(entries)} inputs" if len(entries) > 1 else ""))
    if not merged:
        raise LoraFormatError(f"merge: nothing to write ({len(report.unmatched)} modules cannot be merged)")
    metadata = {"lora_lab.merged_from": ", ".join(report.inputs), "lora_lab.family": loras[0][1].variant,
                "lora_lab.merge_rank": "exact" if rank is None else str(rank)}
    for module, reason in write_lora(output, family, merged, to, metadata):
        report.leave_out(module_label(module), reason)
    report.output = str(output)
    return report
