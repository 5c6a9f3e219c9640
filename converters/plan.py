"""Conversion plan: which input modules make which output modules (keep, rename, fuse, split, slices).

Every data-dependent decision is taken here, once, before anything is produced: whether split parts share one
A matrix (read from the data) and how DoRA parts of a fused layer are written. Producing the output
(`run_group`) then depends only on keys, shapes and alphas, so the shape-only header pass of the file path and
the data pass (and the in-memory path) cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..lora_core.errors import LoraFormatError
from .families import Family
from .families.rule import Rule
from .fuse_split import cat0, downs_equal, fuse, split, swap_halves
from .evidence import shape_of
from .lora_index import ModuleRef
from .module_weights import ModuleWeights
from .source import TensorSource


@dataclass
class Group:
    component: str
    op: str  # "keep" | "fuse" | "split" | "slices"
    sources: list[ModuleRef | None]
    names: list[str]  # output module names on the target side ("slices": the fused module)
    sizes: list[int] = field(default_factory=list)
    swap: bool = False
    pad_rows: int = 0
    shared_down: bool = False  # the parts were split from one fused module: one A, no rank growth
    rule: Rule | None = None
    parts: list[str] = field(default_factory=list)  # diffusers names of the parts ("slices")


@dataclass
class OutModule:
    """One output module. A slice covers rows [start, start + count) of the fused weight `name`; ComfyUI
    maps the part's own (diffusers) name onto exactly those rows."""

    component: str
    name: str
    weights: ModuleWeights
    part: str | None = None
    rows: tuple[int, int] | None = None


def _rows_in(source: TensorSource, ref: ModuleRef) -> tuple[int | None, int | None]:
    k = ref.keys
    rows: int | None
    for role in ("up", "diff", "diff_b", "hada_w1_a"):
        if role in k:
            rows = source.shape(k[role])[0]
            break
    else:
        rows = shape_of(source, ref)[0] if ref.kind == "lokr" else None  # Kronecker factors: rows multiply
    cols = source.shape(k["down"])[1] if "down" in k else None
    return rows, cols


def _sizes(rule: Rule, total: int, where: str) -> list[int]:
    unit, rem = divmod(total, sum(rule.ratios))
    if rem:
        raise LoraFormatError(f"{where}: {total} output rows cannot be split {rule.ratios} into {rule.parts}")
    return [unit * r for r in rule.ratios]


def _has_dora(ref: ModuleRef | None) -> bool:
    return ref is not None and ("magnitude" in ref.keys or "dora_scale" in ref.keys)


def _shares_down(source: TensorSource, parts: list[ModuleRef | None], load) -> bool:
    """All parts present, plain LoRA, the same scale and bit-identical A matrices (read from the data)."""
    if any(p is None or p.kind != "lora" or "down" not in p.keys or "mid" in p.keys for p in parts):
        return False
    scales = [load(p).scale for p in parts]
    if any(abs(s - scales[0]) > 1e-12 * max(1.0, abs(scales[0])) for s in scales):
        return False
    return downs_equal([source.get(p.keys["down"]) for p in parts])


def build_plan(source: TensorSource, refs: list[ModuleRef], family: Family, target: str, load,
               slices: bool = False) -> list[Group]:
    """target: "original" or "diffusers" naming for the denoiser; text encoders keep their names.
    load(ref) -> ModuleWeights (shape-only is enough). slices: DoRA parts of a fused layer may be written as
    slices of it (ComfyUI maps them per part) instead of being fused."""
    groups: list[Group] = []
    fusing: dict[tuple, list[ModuleRef | None]] = {}
    for ref in refs:
        m = ref.match
        if ref.component != "model":
            groups.append(Group(ref.component, "keep", [ref], [m.name]))
            continue
        rule = m.rule
        rows, cols = _rows_in(source, ref)
        needs_swap = bool(rule.swap and rows and cols and rule.swap(rows, cols))
        if m.side == target or (not rule.fused and rule.original == rule.parts[0]):
            groups.append(Group("model", "keep", [ref], [m.name]))
        elif not rule.fused:
            name = m.original_name if target == "original" else m.part_name(0)
            groups.append(Group("model", "keep", [ref], [name], swap=needs_swap))
        elif m.side == "original":
            pad = 0
            if rule.ratios == (1, 1, 1, 4) and rows and cols and rows == 3 * cols:
                pad, rows = 4 * cols, 7 * cols  # Flux linear1 LoRA that only covers q, k, v (XLabs, linear1_qkv)
            names = [m.part_name(i) for i in range(len(rule.parts))]
            groups.append(Group("model", "split", [ref], names, _sizes(rule, rows, ref.raw_name), needs_swap, pad,
                                rule=rule))
        else:
            slot = fusing.setdefault((id(rule), tuple(sorted(m.groups.items()))), [None] * len(rule.parts))
            slot[m.part] = ref
    for parts in fusing.values():
        groups.append(_fuse_group(source, parts, load, slices))
    return groups


def _fuse_group(source: TensorSource, parts: list[ModuleRef | None], load, slices: bool) -> Group:
    ref = next(p for p in parts if p is not None)
    m, rule = ref.match, ref.match.rule
    units = set()
    for p, ratio in zip(parts, rule.ratios):
        if p is not None:
            rows, _ = _rows_in(source, p)
            if rows % ratio:
                raise LoraFormatError(f"module {p.raw_name!r}: {rows} rows do not fit {rule.original}")
            units.add(rows // ratio)
    if len(units) != 1:
        names = [p.raw_name for p in parts if p is not None]
        raise LoraFormatError(f"inconsistent shapes: parts {names} of {m.original_name} have different widths")
    unit = units.pop()
    sizes = [unit * r for r in rule.ratios]
    cols = _rows_in(source, ref)[1]
    needs_swap = bool(rule.swap and cols and rule.swap(sum(sizes), cols))
    names = [m.part_name(i) for i in range(len(rule.parts))]
    if slices and any(_has_dora(p) for p in parts):
        # DoRA normalises each part's own rows (ComfyUI applies it per slice): kept per part, exactly.
        return Group("model", "slices", parts, [m.original_name], sizes, rule=rule, parts=names)
    return Group("model", "fuse", parts, [m.original_name], sizes, needs_swap,
                 shared_down=_shares_down(source, parts, load), rule=rule, parts=names)


def run_group(group: Group, load) -> list[OutModule]:
    """load(ref) -> ModuleWeights. Pure in the data: every decision was taken by build_plan."""
    if group.op == "slices":
        offsets = [sum(group.sizes[:k]) for k in range(len(group.sizes))]
        return [OutModule(group.component, group.names[0], load(ref), group.parts[k], (offsets[k], group.sizes[k]))
                for k, ref in enumerate(group.sources) if ref is not None]
    if group.op == "fuse":
        parts = [load(r) if r is not None else None for r in group.sources]
        outs = [fuse(parts, group.sizes, group.shared_down)]
    else:
        m = load(group.sources[0])
        if group.pad_rows:
            m = _pad(m, group.pad_rows)
        if group.op == "split" and group.swap:
            m = swap_halves(m)
        outs = split(m, group.sizes) if group.op == "split" else [m]
    if group.swap and group.op != "split":
        outs = [swap_halves(o) for o in outs]
    return [OutModule(group.component, name, o) for name, o in zip(group.names, outs)]


def _pad(m: ModuleWeights, rows: int) -> ModuleWeights:
    up = m.tensors["up"]
    return m.with_tensors(up=cat0([up, up.new_zeros((rows, *up.shape[1:]))]))


__all__ = ["Group", "OutModule", "build_plan", "run_group"]
