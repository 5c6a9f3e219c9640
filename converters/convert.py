"""convert_file / convert_state_dict: a LoRA from any supported format to ComfyUI or diffusers form.

Both paths go through one `Conversion`: the plan takes every data-dependent decision, then a dry run on
shape-only tensors finds, before any data is produced, which modules a conversion rule cannot convert (their
keys are reported with the rule's reason) and the exact list of output tensors. Producing the tensors runs the
same code on the real data; anything that fails there is a bug and propagates.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from ..lora_core.errors import LoraFormatError
from ..lora_core.files.safetensors_io import write_streaming
from .analyse import Analysis, analyse
from .comfyui_keys import comfyui_tensors
from .conversion_error import ConversionError
from .diffusers_keys import adapter_metadata, diffusers_tensors
from .peft_metadata import LORA_ADAPTER_METADATA_KEY
from .plan import Group, build_plan, run_group
from .report import ConvertReport, UnmatchedKey
from .source import DictSource, TensorSource, open_source
from .torch_threads import torch_threads

DTYPES = {None: None, "keep": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TARGETS = ("comfyui", "diffusers")

Entry = tuple[str, torch.dtype, tuple[int, ...]]


@dataclass
class Conversion:
    analysis: Analysis
    to: str
    groups: list[Group]
    dtype: torch.dtype | None
    reasons: dict[int, str] = field(default_factory=dict)  # group index -> why a rule cannot convert it
    entries: list[Entry] = field(default_factory=list)  # every output tensor, in order
    config: dict[str, dict[str, dict]] = field(default_factory=dict)  # component -> module -> PEFT entry

    def _encode(self, group: Group, load) -> list[tuple[str, Tensor]]:
        family = self.analysis.family
        if self.to == "diffusers" and group.component == "model" and not family.diffusers_supported:
            raise ConversionError(f"no diffusers name map for {family.name} models")
        out: list[tuple[str, Tensor]] = []
        for module in run_group(group, load):
            if self.to == "comfyui":
                out += comfyui_tensors(family, module).items()
            else:
                tensors, entry = diffusers_tensors(family, module.component, module.name, module.weights)
                self.config.setdefault(entry["component"], {})[entry["module"]] = entry
                out += tensors.items()
        return [(k, t if k.endswith(".alpha") or self.dtype is None or not t.is_floating_point() else t.to(self.dtype))
                for k, t in out]

    def dry_run(self) -> None:
        """On shape-only tensors: the rules' verdicts and the output header, before any data is read."""
        load = self.analysis.loader(self.analysis.source.meta)
        seen: set[str] = set()
        for gi, group in enumerate(self.groups):
            try:
                produced = self._encode(group, load)
            except ConversionError as e:
                self.reasons[gi] = str(e)
                continue
            for key, t in produced:
                if key in seen:
                    raise LoraFormatError(f"{self.analysis.source.path or 'state dict'}: two input modules both give "
                                          f"{key!r} (the same module stored twice, e.g. in two formats)")
                seen.add(key)
                self.entries.append((key, t.dtype, tuple(t.shape)))

    def tensors(self, fetch) -> Iterator[tuple[str, Tensor]]:
        """The output tensors, read through `fetch`, exactly as `entries` announced them."""
        load = self.analysis.loader(fetch)
        expected = iter(self.entries)
        for gi, group in enumerate(self.groups):
            if gi in self.reasons:
                continue
            for key, t in self._encode(group, load):
                if next(expected, None) != (key, t.dtype, tuple(t.shape)):
                    raise RuntimeError(f"internal error: {key!r} {t.dtype} {tuple(t.shape)} differs from the plan")
                yield key, t

    def report(self) -> ConvertReport:
        a = self.analysis
        failed = [UnmatchedKey(k, reason) for gi, reason in self.reasons.items()
                  for ref in self.groups[gi].sources if ref is not None for k in ref.keys.values()]
        done = [g for gi, g in enumerate(self.groups) if gi not in self.reasons]
        return ConvertReport(
            source=str(a.source.path or "state dict"), target=self.to, format=a.format, family=a.family.name,
            variant=a.variant, family_note=a.detection.note if a.detection else "",
            candidates=a.detection.undecided if a.detection else [],
            modules_in=len(a.refs), modules_out=_modules_out(k for k, _, _ in self.entries),
            tensors_out=len(self.entries), fused=sum(g.op == "fuse" for g in done),
            split=sum(g.op == "split" for g in done), sliced=sum(g.op == "slices" for g in done),
            unmatched=a.unmatched + failed, dropped=a.dropped)

    def metadata(self) -> dict[str, str]:
        a = self.analysis
        meta = {k: v for k, v in a.source.metadata.items() if k != LORA_ADAPTER_METADATA_KEY}
        meta["format"] = "pt"
        meta["lora_lab.converted_from"] = a.format
        undecided = a.detection.undecided if a.detection else []
        meta.pop("lora_lab.family", None)
        meta.pop("lora_lab.family_candidates", None)
        if undecided:  # the file does not say which: name every candidate, never the one whose names were used
            meta["lora_lab.family_candidates"] = ", ".join(undecided)
        else:
            meta["lora_lab.family"] = a.variant
        if self.to == "diffusers" and self.config:
            meta[LORA_ADAPTER_METADATA_KEY] = adapter_metadata(a.family, self.config)
        return meta


def plan_conversion(source: TensorSource, to: str, arch: str | None = None, dtype: str | None = None,
                    hint: str | None = None) -> Conversion:
    """hint: the family of the model the LoRA is for (e.g. a connected MODEL's), used when the keys fit several."""
    if to not in TARGETS:
        raise LoraFormatError(f"unknown target format {to!r}; choose one of {TARGETS}")
    if dtype not in DTYPES:
        raise LoraFormatError(f"unknown dtype {dtype!r}; choose keep, fp16, bf16 or fp32")
    analysis = analyse(source, arch, hint, to=to)
    family = analysis.family
    target = family.comfy_side if to == "comfyui" else "diffusers"
    slices = to == "comfyui" and family.slice_prefix is not None
    groups = build_plan(source, analysis.refs, family, target, analysis.loader(source.meta), slices)
    conversion = Conversion(analysis, to, groups, DTYPES[dtype])
    conversion.dry_run()
    return conversion


def _check_strict(report: ConvertReport, strict: bool) -> None:
    if strict and report.unmatched:
        names = ", ".join(f"{u.key} ({u.reason})" for u in report.unmatched[:10])
        raise LoraFormatError(f"{report.source}: {report.unmatched_count} keys cannot be converted (--strict): {names}")


def _modules_out(keys) -> int:
    return len({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys})


def convert_state_dict(state_dict: dict[str, Tensor], metadata: dict[str, str] | None, to: str,
                       arch: str | None = None, dtype: str | None = None, strict: bool = False,
                       hint: str | None = None) -> tuple[dict[str, Tensor], dict[str, str], ConvertReport]:
    conversion = plan_conversion(DictSource(state_dict, metadata), to, arch, dtype, hint)
    report = conversion.report()
    _check_strict(report, strict)
    return dict(conversion.tensors(state_dict.__getitem__)), conversion.metadata(), report


def to_comfyui_state_dict(state_dict: dict[str, Tensor], metadata: dict[str, str] | None = None,
                          arch: str | None = None, hint: str | None = None
                          ) -> tuple[dict[str, Tensor], dict[str, str], ConvertReport]:
    """Any supported LoRA format -> keys ComfyUI's loader maps (in memory, for Load LoRA)."""
    return convert_state_dict(state_dict, metadata, "comfyui", arch, hint=hint)


def check_output_path(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        raise LoraFormatError(f"{dst}: output exists; pass overwrite=True / --overwrite to replace it")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise LoraFormatError(f"{dst}: output is the input file")


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, to: str, arch: str | None = None,
                 dtype: str | None = None, strict: bool = False, overwrite: bool = False,
                 adapter_config: bool = False, hint: str | None = None) -> ConvertReport:
    """Stream `src` to `dst` (safetensors) in `to` format ("comfyui" | "diffusers"); atomic, module by module.
    hint: the family of the model the LoRA is for (a connected MODEL), used when the keys fit several."""
    src, dst = Path(src), Path(dst)
    check_output_path(src, dst, overwrite)
    source = open_source(src)
    with torch_threads(1):
        try:
            conversion = plan_conversion(source, to, arch, dtype, hint)
            report = conversion.report()
            _check_strict(report, strict)
            if not conversion.entries:
                raise LoraFormatError(f"{src}: nothing to write: none of its keys can be converted to {to} form "
                                      f"({report.unmatched_count} unconverted, e.g. "
                                      f"{report.unmatched[0].key}: {report.unmatched[0].reason})"
                                      if report.unmatched else f"{src}: nothing to write")
            metadata = conversion.metadata()
            write_streaming(dst, conversion.entries, metadata, conversion.tensors(source.get))
            if adapter_config and to == "diffusers":
                _write_adapter_config(dst, metadata)
        finally:
            source.close()
    report.output = str(dst)
    return report


def _write_adapter_config(dst: Path, metadata: dict[str, str]) -> None:
    from ..lora_core.files.atomic import atomic_write_bytes

    packed = json.loads(metadata[LORA_ADAPTER_METADATA_KEY])
    first = next(iter(packed)).split(".")[0]
    config = {k.split(".", 1)[1]: v for k, v in packed.items() if k.startswith(first + ".")}
    config["peft_type"] = "LORA"
    atomic_write_bytes(dst.parent / "adapter_config.json", json.dumps(config, indent=2).encode())
