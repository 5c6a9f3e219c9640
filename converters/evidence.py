"""What a file's modules say about one model family: which modules it names, and whether their shapes fit the
family's released sizes (width, depth) and its fixed shape ratios.

A family that names the modules but whose sizes the shapes contradict (a block index past its depth, a width
its sizes have at another depth, a ratio its architecture never has) is ruled out. A width none of its sizes has
(a model size not listed, or the small test models) neither confirms nor rules out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

from .families import Family
from .families.sizes import Variant
from .lora_index import ModuleRef, load_module
from .source import TensorSource

# How well a family fits a file's shapes, best last. A width its sizes have beats a width none has; between two
# alike, the one whose depth the file reaches exactly (its last block trained: every block of that size) wins.
CONTRADICTED, UNCONFIRMED, UNCONFIRMED_EXACT, CONFIRMED, CONFIRMED_EXACT = 0, 1, 2, 3, 4
_LIST_INDEX = re.compile(r"^(.+?)\.(\d+)\.")


@dataclass
class Verdict:
    family: str
    hits: set[int] = field(default_factory=set)  # id() of the model modules the family names
    fit: int = UNCONFIRMED
    variant: Variant | None = None
    notes: list[str] = field(default_factory=list)  # the evidence, in words


def shape_of(source: TensorSource, ref: ModuleRef) -> tuple[int | None, int | None]:
    """(out_features, in_features) of a module, from its shapes only (any adapter kind)."""
    m = load_module(ref, source.meta, lambda key: 1.0, None)
    return m.out_features, m.in_features


def weigh(family: Family, refs: list[ModuleRef], source: TensorSource, shapes: dict) -> Verdict:
    """shapes: id(ref) -> (out, in), shared between families."""
    verdict = Verdict(family.name)
    widths: set[int] = set()
    deepest: dict[str, int] = {}
    for ref in refs:
        m = family.match(ref.raw_name, ref.flat)
        if m is None:
            continue
        verdict.hits.add(id(ref))
        if family.passthrough:
            continue
        name = m.original_name
        if id(ref) not in shapes:
            shapes[id(ref)] = shape_of(source, ref)
        rows, cols = shapes[id(ref)]
        if family.width_from and cols and re.search(family.width_from, name):
            widths.add(cols)
        place = _LIST_INDEX.match(name)
        if place:
            deepest[place.group(1)] = max(deepest.get(place.group(1), -1), int(place.group(2)))
        whole = m.side == "original" or not m.rule.fused  # this module's rows are the whole original's
        for r in family.ratios:
            if whole and rows and cols and re.search(r.pattern, name) and Fraction(rows, cols) not in r.ratios:
                if verdict.fit != CONTRADICTED:  # the first contradiction is evidence enough
                    verdict.notes.append(f"{ref.raw_name}: {rows}x{cols}, but {family.name} has {r.what}")
                verdict.fit = CONTRADICTED
    if family.sizes and verdict.hits and verdict.fit != CONTRADICTED:
        _sizes(family, widths, deepest, verdict)
    return verdict


def _fits(v: Variant, deepest: dict[str, int]) -> bool:
    return all(i < v.depth[lst] for lst, i in deepest.items() if lst in v.depth)


def _exact(v: Variant, deepest: dict[str, int]) -> bool:
    """The file trains the last block of every block list of this size it touches."""
    lists = [lst for lst in deepest if lst in v.depth]
    return bool(lists) and all(deepest[lst] == v.depth[lst] - 1 for lst in lists)


def _sizes(family: Family, widths: set[int], deepest: dict[str, int], verdict: Verdict) -> None:
    width = next(iter(widths)) if len(widths) == 1 else None
    same_width = [v for v in family.sizes if v.width == width]
    depth = ", ".join(f"{lst} up to {i}" for lst, i in sorted(deepest.items()))
    if same_width:
        fitting = sorted((v for v in same_width if _fits(v, deepest)), key=lambda v: not _exact(v, deepest))
        if fitting:
            exact = _exact(fitting[0], deepest)
            verdict.fit, verdict.variant = (CONFIRMED_EXACT if exact else CONFIRMED), fitting[0]
            verdict.notes.append(f"width {width}" + (f", {depth}" if depth else "") + f": fits {fitting[0].name}"
                                 + (" (its last block included)" if exact else ""))
        else:
            verdict.fit = CONTRADICTED
            verdict.notes.append(f"width {width} is {', '.join(v.name for v in same_width)}, "
                                 f"but {depth} is deeper than {family.name} goes")
        return
    if not any(_fits(v, deepest) for v in family.sizes):
        verdict.fit = CONTRADICTED
        verdict.notes.append(f"{depth}: deeper than any {family.name} model")
        return
    reached = next((v for v in family.sizes if _exact(v, deepest)), None)
    if reached is not None:
        verdict.fit = UNCONFIRMED_EXACT
        verdict.notes.append(f"{depth}: the depth of {reached.name}")
    if width is not None:
        verdict.notes.append(f"width {width}: no {family.name} size listed here has it")
    elif len(widths) > 1:
        verdict.notes.append(f"widths {sorted(widths)} disagree")
