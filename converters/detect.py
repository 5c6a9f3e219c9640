"""Detect a LoRA's file format and model family from its keys, shapes and metadata."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..lora_core.errors import LoraFormatError
from .families import FAMILIES, Family, get_family, sana, wan
from .lora_index import ModuleRef
from .source import TensorSource

# Families whose name maps overlap, tried in this order when they match equally well.
PRIORITY = ("flux", "sd3", "sana", "wan", "sd15", "sdxl", "hunyuan_video")
_FLUX_LIMITS = ((re.compile(r"double_blocks[._](\d+)"), 19), (re.compile(r"single_blocks[._](\d+)"), 38))


@dataclass
class Detection:
    family: Family
    variant: str
    format: str


def _plausible(family: str, refs: list[ModuleRef]) -> bool:
    if family != "flux":
        return True
    for ref in refs:  # HunyuanVideo shares Flux's names but has 20 double / 40 single blocks
        for pattern, limit in _FLUX_LIMITS:
            m = pattern.search(ref.raw_name)
            if m and int(m.group(1)) >= limit:
                return False
    return True


def _cross_dim(source: TensorSource, refs: list[ModuleRef]) -> int | None:
    for ref in refs:
        if re.search(r"attn2[._]to_k$", ref.raw_name) and "down" in ref.keys:
            return source.shape(ref.keys["down"])[1]
    return None


def _sd_family(source: TensorSource, refs: list[ModuleRef], components: set[str]) -> str | None:
    dim = _cross_dim(source, refs)
    if dim == 768:
        return "sd15"
    if dim == 2048 or "te2" in components:
        return "sdxl"
    return None


def detect_family(source: TensorSource, modules: dict[tuple, ModuleRef], arch: str | None) -> Family:
    where = source.path or "state dict"
    if arch:
        return get_family(arch)
    refs = [r for r in modules.values() if r.component == "model"]
    components = {r.component for r in modules.values()}
    if not refs:
        if components:  # text-encoder-only LoRA: names are family-neutral
            return FAMILIES["sdxl" if "te2" in components else "sd15"]
        raise LoraFormatError(f"{where}: no LoRA module found")
    hits = {name: {id(r) for r in refs if fam.match(r.raw_name, r.flat)} for name, fam in FAMILIES.items()
            if _plausible(name, refs)}
    best = max(len(h) for h in hits.values())
    if best == 0:
        sample = ", ".join(sorted(r.raw_name for r in refs)[:3])
        raise LoraFormatError(f"{where}: cannot tell the model family (no known module names, e.g. {sample}); "
                              f"pass --arch")
    top = [n for n in PRIORITY if n in hits and len(hits[n]) == best]
    if {"sd15", "sdxl"} <= set(top):
        chosen = _sd_family(source, refs, components)
        if chosen is None:
            raise LoraFormatError(f"{where}: ambiguous between SD1.5 and SDXL; pass --arch sd15 or --arch sdxl")
        top = [chosen]
    elif {"flux", "sd3"} <= set(top):
        width = _width(source, refs, r"(attn[._]to_[qkv]|attn[._]add_[qkv]_proj|attn[._]to_out)")
        top = ["flux" if width in (3072, None) else "sd3"]
    elif (len(top) > 1 and not ({"flux", "hunyuan_video"} >= set(top))
          and all(hits[n] == hits[top[0]] for n in top)):
        raise LoraFormatError(f"{where}: ambiguous model family ({', '.join(top)}); pass --arch")
    chosen = top[0]
    others = {n: h - hits[chosen] for n, h in hits.items() if n != chosen and h - hits[chosen]}
    if others:
        other, extra = max(others.items(), key=lambda kv: len(kv[1]))
        name = next(r.raw_name for r in refs if id(r) in extra)
        raise LoraFormatError(f"{where}: the file mixes two model families: {len(hits[chosen])} {chosen} modules "
                              f"and {len(extra)} {other} modules (e.g. {name!r})")
    return FAMILIES[chosen]


def _width(source: TensorSource, refs: list[ModuleRef], pattern: str) -> int | None:
    for ref in refs:
        if re.search(pattern, ref.raw_name) and "down" in ref.keys:
            return source.shape(ref.keys["down"])[1]
    return None


def detect_variant(family: Family, source: TensorSource, modules: dict[tuple, ModuleRef]) -> str:
    refs = [r for r in modules.values() if r.component == "model"]
    if family.name == "sana":
        width = _width(source, refs, r"(attn1[._]to_[qkv]|attn[._]qkv|attn[._]proj|attn1[._]to_out)")
        return sana.VARIANTS.get(width, f"sana (width {width})" if width else "sana")
    if family.name == "wan":
        i2v = any(m in r.raw_name for r in refs for m in wan.I2V_MARKERS)
        width = _width(source, refs, r"(self_attn[._][qkvo]|attn1[._]to_)")
        size = wan.VARIANTS.get(width, f"width {width}" if width else "")
        return f"wan {'i2v' if i2v else 't2v'}" + (f" ({size})" if size else "")
    return family.name


def describe_format(modules: dict[tuple, ModuleRef], source: TensorSource) -> str:
    styles = sorted({r.style for r in modules.values()})
    keys = " ".join(source.keys()[:2000])
    extras = []
    if "_lora.down." in keys or ".lora.down." in keys or "lora_linear_layer" in keys:
        extras.append("old diffusers")
    kinds = sorted({r.kind for r in modules.values()} - {"lora"})
    if any("magnitude" in r.keys or "dora_scale" in r.keys for r in modules.values()):
        kinds.append("dora")
    text = "+".join(styles) + (f" ({', '.join(extras)})" if extras else "")
    return text + (f" [{', '.join(kinds)}]" if kinds else "")
