"""One name-map rule: an original (ComfyUI-side) module and the diffusers module(s) it corresponds to."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

_DIGITS = re.compile(r"\d+")


def normalise(name: str) -> str:
    """Index key shared by a template and every concrete name it matches: digit runs become '#'."""
    return _DIGITS.sub("#", name.replace("{i}", "#").replace("{j}", "#"))


def flatten(name: str) -> str:
    """kohya-style flat name: dots become underscores."""
    return name.replace(".", "_")


def _regex(template: str, flat: bool) -> re.Pattern:
    text = flatten(template) if flat else template
    pattern = re.escape(text).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile(pattern)


@dataclass(frozen=True)
class Rule:
    """`original` is split (row-wise, in `ratios` proportions) into `parts` on the diffusers side.

    swap(out_rows, in_features) says whether the B rows are stored as (shift, scale) on one side and
    (scale, shift) on the other (AdaLayerNormContinuous), in which case the two row halves are exchanged.
    `also`: other spellings of `original` that trainers write (read only; output always uses `original`).
    """

    original: str
    parts: tuple[str, ...]
    ratios: tuple[int, ...] = (1,)
    swap: Callable[[int, int], bool] | None = None
    also: tuple[str, ...] = ()
    compiled: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self):
        if len(self.ratios) != len(self.parts):
            object.__setattr__(self, "ratios", (1,) * len(self.parts))

    @property
    def fused(self) -> bool:
        return len(self.parts) > 1

    def pattern(self, template: str, flat: bool) -> re.Pattern:
        key = (template, flat)
        if key not in self.compiled:
            self.compiled[key] = _regex(template, flat)
        return self.compiled[key]

    def fill(self, template: str, groups: dict[str, str]) -> str:
        return template.format(**groups) if groups else template


def same_name(*names: str) -> list[Rule]:
    """Modules whose name is identical on both sides (still listed so they are recognised)."""
    return [Rule(n, (n,)) for n in names]


def prefixed(prefix: str, rules: list[Rule], diffusers_prefix: str | None = None) -> list[Rule]:
    """The same rules one level down (e.g. per block): `prefix` on the original side, `diffusers_prefix`
    (default: the same) on the diffusers side."""
    dp = prefix if diffusers_prefix is None else diffusers_prefix
    return [Rule(prefix + r.original, tuple(dp + p for p in r.parts), r.ratios, r.swap,
                 tuple(prefix + a for a in r.also)) for r in rules]


@dataclass
class Match:
    rule: Rule
    side: str  # "original" | "diffusers"
    part: int  # index into rule.parts when side == "diffusers", else -1
    groups: dict[str, str]

    @property
    def original_name(self) -> str:
        return self.rule.fill(self.rule.original, self.groups)

    def part_name(self, index: int) -> str:
        return self.rule.fill(self.rule.parts[index], self.groups)

    @property
    def name(self) -> str:
        return self.original_name if self.side == "original" else self.part_name(self.part)


class RuleIndex:
    """Looks up dotted or flattened module names among a family's rules in O(1) candidates."""

    def __init__(self, rules: list[Rule]):
        self.rules = rules
        self._index: dict[tuple[str, bool], list[tuple[Rule, str, int, str]]] = {}
        for rule in rules:
            entries = [("original", -1, t) for t in (rule.original, *rule.also)]
            entries += [("diffusers", k, p) for k, p in enumerate(rule.parts)]
            for side, part, template in entries:
                for flat in (False, True):
                    text = flatten(template) if flat else template
                    self._index.setdefault((normalise(text), flat), []).append((rule, side, part, template))

    def match(self, name: str, flat: bool, sides: tuple[str, ...] = ("original", "diffusers")) -> Match | None:
        for rule, side, part, template in self._index.get((normalise(name), flat), ()):
            if side not in sides:
                continue
            m = rule.pattern(template, flat).fullmatch(name)
            if m:
                return Match(rule, side, part, m.groupdict())
        if name.endswith(".to_out.0"):  # key_format reads old diffusers' `to_out` as `to_out.0`; some models'
            return self.match(name[:-2], flat, sides)  # output projection is a plain `to_out` (HiDream, Flux 2)
        return None


class PassThroughIndex(RuleIndex):
    """A model with no name map: every module name is its own rule, kept as is (ComfyUI's loader maps a
    model's own module names for every model it loads)."""

    def __init__(self):
        super().__init__([])

    def match(self, name: str, flat: bool, sides: tuple[str, ...] = ("original", "diffusers")) -> Match | None:
        return Match(Rule(name, (name,)), "original", -1, {}) if "original" in sides else None
