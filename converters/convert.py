"""convert_file / to_comfyui_state_dict: stream a LoRA from any supported format to ComfyUI or diffusers form."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from ..lora_core.errors import LoraFormatError
from .analyse import Analysis, analyse
from .comfyui_keys import comfyui_tensors
from .diffusers_keys import component_prefix, diffusers_tensors
from .fuse_split import ConversionError
from .peft_metadata import LORA_ADAPTER_METADATA_KEY, build_config
from .plan import Group, build_plan, run_group
from .report import ConvertReport, UnmatchedKey
from .safetensors_stream import write_streaming
from .source import DictSource, open_source
from .torch_threads import torch_threads

DTYPES = {None: None, "keep": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TARGETS = ("comfyui", "diffusers")


@dataclass
class _Run:
    """State of one conversion pass: failed groups and per-module PEFT config entries."""

    failed: dict[int, str] = field(default_factory=dict)
    config: dict[str, dict[str, dict]] = field(default_factory=dict)
    emitted: set[str] = field(default_factory=set)


def _target_side(analysis: Analysis, to: str) -> str:
    return analysis.family.comfy_side if to == "comfyui" else "diffusers"


def _cast(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    return t if dtype is None or not t.is_floating_point() else t.to(dtype)


def _produce(analysis: Analysis, groups: list[Group], to: str, fetch, dtype, run: _Run) -> Iterator[tuple[str, Tensor]]:
    load = analysis.loader(fetch)
    family = analysis.family
    for gi, group in enumerate(groups):
        if gi in run.failed:
            continue
        try:
            if to == "diffusers" and group.component == "model" and not family.diffusers_supported:
                raise ConversionError(f"no diffusers name map for {family.name}")
            produced: list[tuple[str, Tensor]] = []
            for component, name, m in run_group(group, load):
                if to == "comfyui":
                    produced += comfyui_tensors(family, component, name, m).items()
                else:
                    tensors, entry = diffusers_tensors(family, component, name, m)
                    run.config.setdefault(component, {})[name] = entry
                    produced += tensors.items()
        except (ConversionError, NotImplementedError) as e:
            run.failed[gi] = str(e)
            continue
        for key, t in produced:
            if key in run.emitted:
                raise LoraFormatError(f"{analysis.source.path or 'state dict'}: two input modules both give {key!r} "
                                      f"(the same module stored twice, e.g. in two formats)")
            run.emitted.add(key)
            yield key, (t if key.endswith(".alpha") else _cast(t, dtype))


def _unmatched_from_failures(groups: list[Group], run: _Run) -> list[UnmatchedKey]:
    out = []
    for gi, reason in run.failed.items():
        for ref in groups[gi].sources:
            if ref is not None:
                out += [UnmatchedKey(k, reason) for k in ref.keys.values()]
    return out


def _metadata(analysis: Analysis, to: str, run: _Run) -> dict[str, str]:
    meta = {k: v for k, v in analysis.source.metadata.items() if k != LORA_ADAPTER_METADATA_KEY}
    meta["format"] = "pt"
    meta["lora_lab.converted_from"] = analysis.format
    meta["lora_lab.family"] = analysis.variant
    if to == "diffusers" and run.config:
        packed = {}
        for component, entries in run.config.items():
            config = build_config({n: e["rank"] for n, e in entries.items()}, {n: e["alpha"] for n, e in entries.items()},
                                  any(e["dora"] for e in entries.values()), any(e["bias"] for e in entries.values()))
            prefix = component_prefix(analysis.family, component)
            packed.update({f"{prefix}.{k}": v for k, v in config.items()})
        meta[LORA_ADAPTER_METADATA_KEY] = json.dumps(packed, sort_keys=True)
    return meta


def _report(analysis: Analysis, groups: list[Group], to: str, run: _Run, n_out: int, n_modules: int) -> ConvertReport:
    return ConvertReport(
        source=str(analysis.source.path or "state dict"), target=to, format=analysis.format,
        family=analysis.family.name, variant=analysis.variant, modules_in=len(analysis.refs), modules_out=n_modules,
        tensors_out=n_out, fused=sum(g.op == "fuse" for g in groups), split=sum(g.op == "split" for g in groups),
        unmatched=analysis.unmatched + _unmatched_from_failures(groups, run))


def _check_strict(report: ConvertReport, strict: bool) -> None:
    if strict and report.unmatched:
        names = ", ".join(f"{u.key} ({u.reason})" for u in report.unmatched[:10])
        raise LoraFormatError(f"{report.source}: {report.unmatched_count} keys cannot be converted (--strict): {names}")


def _modules_out(keys) -> int:
    return len({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys})


def convert_state_dict(state_dict: dict[str, Tensor], metadata: dict[str, str] | None, to: str,
                       arch: str | None = None, dtype: str | None = None, strict: bool = False
                       ) -> tuple[dict[str, Tensor], dict[str, str], ConvertReport]:
    if to not in TARGETS:
        raise LoraFormatError(f"unknown target format {to!r}; choose one of {TARGETS}")
    analysis = analyse(DictSource(state_dict, metadata), arch)
    groups = build_plan(analysis.source, analysis.refs, analysis.family, _target_side(analysis, to))
    run = _Run()
    out = dict(_produce(analysis, groups, to, analysis.source.get, DTYPES[dtype], run))
    report = _report(analysis, groups, to, run, len(out), _modules_out(out))
    _check_strict(report, strict)
    return out, _metadata(analysis, to, run), report


def to_comfyui_state_dict(state_dict: dict[str, Tensor], metadata: dict[str, str] | None = None,
                          arch: str | None = None) -> tuple[dict[str, Tensor], dict[str, str], ConvertReport]:
    """Any supported LoRA format -> keys ComfyUI's loader maps (in memory, for Load LoRA)."""
    return convert_state_dict(state_dict, metadata, "comfyui", arch)


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, to: str, arch: str | None = None,
                 dtype: str | None = None, strict: bool = False, overwrite: bool = False,
                 adapter_config: bool = False) -> ConvertReport:
    """Stream `src` to `dst` (safetensors) in `to` format ("comfyui" | "diffusers"); atomic, module by module."""
    src, dst = Path(src), Path(dst)
    if to not in TARGETS:
        raise LoraFormatError(f"unknown target format {to!r}; choose one of {TARGETS}")
    if dtype not in DTYPES:
        raise LoraFormatError(f"unknown dtype {dtype!r}; choose keep, fp16, bf16 or fp32")
    if dst.exists() and not overwrite:
        raise LoraFormatError(f"{dst}: output exists; pass overwrite=True / --overwrite to replace it")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise LoraFormatError(f"{dst}: output is the input file")
    source = open_source(src)
    with torch_threads(1):
        try:
            analysis = analyse(source, arch)
            groups = build_plan(source, analysis.refs, analysis.family, _target_side(analysis, to))
            run = _Run()
            # pass 1 on shape-only tensors: the header (and the PEFT config) before any data is written
            entries = [(k, t.dtype, tuple(t.shape)) for k, t in _produce(analysis, groups, to, source.meta,
                                                                          DTYPES[dtype], run)]
            report = _report(analysis, groups, to, run, len(entries), _modules_out(k for k, _, _ in entries))
            _check_strict(report, strict)
            if not entries:
                raise LoraFormatError(f"{src}: nothing to write ({report.unmatched_count} keys unmatched)")
            metadata = _metadata(analysis, to, run)
            run.emitted.clear()
            write_streaming(dst, entries, metadata, _produce(analysis, groups, to, source.get, DTYPES[dtype], run))
            if adapter_config and to == "diffusers":
                _write_adapter_config(dst, metadata)
        finally:
            source.close()
    report.output = str(dst)
    return report


def _write_adapter_config(dst: Path, metadata: dict[str, str]) -> None:
    from ..lora_core.atomic import atomic_write_bytes

    packed = json.loads(metadata[LORA_ADAPTER_METADATA_KEY])
    first = next(iter(packed)).split(".")[0]
    config = {k.split(".", 1)[1]: v for k, v in packed.items() if k.startswith(first + ".")}
    config["peft_type"] = "LORA"
    atomic_write_bytes(dst.parent / "adapter_config.json", json.dumps(config, indent=2).encode())
