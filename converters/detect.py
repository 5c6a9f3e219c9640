"""Detect a LoRA's file format and model family from its keys, shapes and metadata."""

from __future__ import annotations

import re

from ..lora_core.errors import LoraFormatError
from .families import FAMILIES, GENERIC, Family, get_family, hunyuan_video, lumina2, sana, wan, z_image
from .lora_index import ModuleRef
from .source import TensorSource

# Families whose name maps overlap, tried in this order when they match equally well.
PRIORITY = ("flux", "sd3", "sana", "wan", "sd15", "sdxl", "hunyuan_video", "chroma", "qwen_image", "z_image",
            "lumina2")
# Maps that agree on every module they share: a tie between them converts identically, so the first one wins.
INTERCHANGEABLE = ({"flux", "hunyuan_video", "chroma"},)
_BLOCK = re.compile(r"(?:^|[._])(single_transformer_blocks|transformer_blocks|double_blocks|single_blocks|joint_blocks)[._](\d+)")


def _within_limits(family: Family, refs: list[ModuleRef]) -> bool:
    """Block indices beyond the model's depth (e.g. double_blocks.19 for Flux) mean another model."""
    if not family.block_limits:
        return True
    for ref in refs:
        m = _BLOCK.search(ref.raw_name)
        if m and m.group(1) in family.block_limits and int(m.group(2)) >= family.block_limits[m.group(1)]:
            return False
    return True


def _in_features(source: TensorSource, refs: list[ModuleRef], pattern: str) -> int | None:
    """Input width of the first module whose name matches `pattern` (from its down / A matrix)."""
    for ref in refs:
        if re.search(pattern, ref.raw_name) and "down" in ref.keys:
            return source.shape(ref.keys["down"])[1]
    return None


def _sd_family(source: TensorSource, refs: list[ModuleRef], components: set[str]) -> str | None:
    dim = _in_features(source, refs, r"attn2[._]to_k$")
    if dim == 768:
        return "sd15"
    if dim == 2048 or "te2" in components:
        return "sdxl"
    return None


def _nextdit_family(source: TensorSource, refs: list[ModuleRef]) -> str | None:
    """Lumina 2 and Z-Image share ComfyUI's names. Z-Image's qkv has 3 x width rows, Lumina 2's (grouped-query
    attention) 5/3 x width; failing a qkv module, the width itself tells."""
    for ref in refs:
        if re.search(r"attention[._]qkv$", ref.raw_name) and "down" in ref.keys and "up" in ref.keys:
            rows, cols = source.shape(ref.keys["up"])[0], source.shape(ref.keys["down"])[1]
            return "z_image" if rows == 3 * cols else "lumina2" if 3 * rows == 5 * cols else None
    width = _in_features(source, refs, r"(attention[._]out|feed_forward[._]w[13])$")
    return {lumina2.WIDTH: "lumina2", z_image.WIDTH: "z_image"}.get(width)


def _break_tie(top: list[str], hits: dict, source: TensorSource, refs: list[ModuleRef], components: set[str],
               where: str) -> str:
    tied = set(top)
    if len(top) == 1:
        return top[0]
    if {"sd15", "sdxl"} <= tied:
        chosen = _sd_family(source, refs, components)
        if chosen is None:
            raise LoraFormatError(f"{where}: ambiguous between SD1.5 and SDXL; pass --arch sd15 or --arch sdxl")
        return chosen
    if {"flux", "sd3"} <= tied:
        width = _in_features(source, refs, r"(attn[._]to_[qkv]|attn[._]add_[qkv]_proj|attn[._]to_out)")
        return "flux" if width in (3072, None) else "sd3"
    if {"lumina2", "z_image"} <= tied:
        chosen = _nextdit_family(source, refs)
        if chosen is None:
            raise LoraFormatError(f"{where}: ambiguous between Lumina 2 and Z-Image; pass --arch lumina2 or z_image")
        return chosen
    if any(tied <= group for group in INTERCHANGEABLE) or not all(hits[n] == hits[top[0]] for n in top):
        return top[0]
    raise LoraFormatError(f"{where}: ambiguous model family ({', '.join(top)}); pass --arch")


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
            if _within_limits(fam, refs)}
    best = max(len(h) for h in hits.values())
    if best == 0:
        return GENERIC  # a model without a name map here: its own module names pass through to ComfyUI form
    top = [n for n in PRIORITY if n in hits and len(hits[n]) == best]
    chosen = _break_tie(top, hits, source, refs, components, where)
    others = {n: h - hits[chosen] for n, h in hits.items() if n != chosen and h - hits[chosen]}
    if others:
        other, extra = max(others.items(), key=lambda kv: len(kv[1]))
        name = next(r.raw_name for r in refs if id(r) in extra)
        raise LoraFormatError(f"{where}: the file mixes two model families: {len(hits[chosen])} {chosen} modules "
                              f"and {len(extra)} {other} modules (e.g. {name!r})")
    return FAMILIES[chosen]


def detect_variant(family: Family, source: TensorSource, modules: dict[tuple, ModuleRef]) -> str:
    refs = [r for r in modules.values() if r.component == "model"]
    if family.name == "sana":
        width = _in_features(source, refs, r"(attn1[._]to_[qkv]|attn[._]qkv|attn[._]proj|attn1[._]to_out)")
        return sana.VARIANTS.get(width, f"sana (width {width})" if width else "sana")
    if family.name == "wan":
        i2v = any(m in r.raw_name for r in refs for m in wan.I2V_MARKERS)
        width = _in_features(source, refs, r"(self_attn[._][qkvo]|attn1[._]to_)")
        size = wan.VARIANTS.get(width, f"width {width}" if width else "")
        return f"wan {'i2v' if i2v else 't2v'}" + (f" ({size})" if size else "")
    if family.name == "hunyuan_video":
        channels = _in_features(source, refs, r"(img_in[._]proj|x_embedder[._]proj)$")
        i2v = channels == hunyuan_video.I2V_IN_CHANNELS or any("I2V" in r.style for r in refs)
        return "hunyuan_video i2v" if i2v else "hunyuan_video"
    if family.passthrough:
        return "generic (no name map: module names kept)"
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
