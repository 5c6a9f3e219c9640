"""What a family's released models measure: the facts detection weighs besides module names.

A LoRA's shapes carry the model's width (the input width of the modules that read the hidden state) and its
block indices the depth; a few layers have a rows / columns ratio fixed by the architecture (Flux's MLP is 4x
wide, Flux 2's SwiGLU MLP 6x), which holds at any size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction


@dataclass(frozen=True)
class Variant:
    """One released size: its hidden width and how many blocks each block list has (original names)."""

    name: str
    width: int
    depth: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Ratio:
    """Modules whose original name matches `pattern` have `rows / cols` equal to one of `ratios`."""

    pattern: str
    ratios: tuple[Fraction, ...]
    what: str  # a few words for the evidence line, e.g. "MLP 4x wide"


def ratio(pattern: str, what: str, *values: int | str) -> Ratio:
    return Ratio(pattern, tuple(Fraction(v) for v in values), what)
