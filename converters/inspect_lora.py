"""inspect_lora: format, family, module count, ranks, alphas, adapter types, metadata and trigger words."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .analyse import analyse
from .report import UnmatchedKey
from .source import open_source

_TRIGGER_KEYS = ("modelspec.trigger_phrase", "ss_trigger_words", "trigger_words", "trigger_word", "ss_activation_text")


@dataclass
class LoraReport:
    path: str
    format: str
    family: str
    variant: str
    modules: int
    ranks: list[int]
    alphas: list[float]
    adapter_types: list[str]
    metadata: dict[str, str]
    trigger_words: list[str]
    components: dict[str, int] = field(default_factory=dict)
    unmatched: list[UnmatchedKey] = field(default_factory=list)
    family_note: str = ""  # how the family was chosen when the keys alone do not say
    candidates: list[str] = field(default_factory=list)  # the families the keys fit equally well (best first)
    evidence: list[str] = field(default_factory=list)  # what the keys and shapes say about each of them
    ambiguous: bool = False  # the keys fit several families that convert them differently: --arch decides
    undecided: list[str] = field(default_factory=list)  # the keys fit these alike (they convert alike), none named

    def __str__(self) -> str:
        meta = {k: (v if len(v) <= 120 else v[:117] + "...") for k, v in sorted(self.metadata.items())}
        family = ("ambiguous: " + " or ".join(self.candidates) + " (convert needs --arch)" if self.ambiguous
                  else ("one of " + ", ".join(self.undecided) if self.undecided else self.variant)
                  + (f" ({self.family_note})" if self.family_note else ""))
        lines = [f"file:      {self.path}", f"format:    {self.format}", f"family:    {family}",
                 f"modules:   {self.modules} ({', '.join(f'{k}: {v}' for k, v in sorted(self.components.items()))})",
                 f"rank(s):   {', '.join(map(str, self.ranks)) or '-'}",
                 f"alpha(s):  {', '.join(f'{a:g}' for a in self.alphas) or '- (scale 1)'}",
                 f"adapters:  {', '.join(self.adapter_types)}",
                 f"triggers:  {', '.join(self.trigger_words) or '-'}",
                 f"unmatched: {len(self.unmatched)}"]
        why = ([f"candidates: {', '.join(self.candidates)}"] if len(self.candidates) > 1 else [])
        why += ["evidence:"] + [f"  {e}" for e in self.evidence] if self.evidence else []
        lines[3:3] = why
        lines += [f"  {u.key}: {u.reason}" for u in self.unmatched[:50]]
        lines.append(f"metadata:  {len(meta)} entries")
        lines += [f"  {k}: {v}" for k, v in meta.items()]
        return "\n".join(lines)


def _trigger_words(metadata: dict[str, str]) -> list[str]:
    words: list[str] = []
    for key in _TRIGGER_KEYS:
        value = metadata.get(key)
        if value:
            words += [w.strip() for w in value.split(",") if w.strip()]
    if not words and metadata.get("ss_tag_frequency"):
        try:  # kohya: {"dir": {"tag": count}} - the most frequent tags are usually the trigger
            freq: dict[str, int] = {}
            for tags in json.loads(metadata["ss_tag_frequency"]).values():
                for tag, n in tags.items():
                    freq[tag.strip()] = freq.get(tag.strip(), 0) + int(n)
            words = [t for t, _ in sorted(freq.items(), key=lambda kv: -kv[1])[:3]]
        except (ValueError, AttributeError):
            pass
    return list(dict.fromkeys(words))


def inspect_lora(path: str | os.PathLike, arch: str | None = None, hint: str | None = None) -> LoraReport:
    """hint: the family of the model the LoRA is for, when known (a connected MODEL)."""
    source = open_source(path)
    try:
        a = analyse(source, arch, hint, allow_ambiguous=True)
        load = a.loader(source.meta)
        ranks, alphas, kinds, components = set(), set(), set(), {}
        for ref in a.refs:
            m = load(ref)
            kinds.add(m.kind + ("+dora" if "magnitude" in m.tensors or "dora_scale" in m.tensors else ""))
            if m.rank is not None:
                ranks.add(m.rank)
                if m.alpha is not None:
                    alphas.add(round(m.alpha, 6))
            components[ref.component] = components.get(ref.component, 0) + 1
        d = a.detection
        ambiguous = bool(d and d.how == "ambiguous")
        return LoraReport(str(path), a.format, "ambiguous" if ambiguous else a.family.name, a.variant, len(a.refs),
                          sorted(ranks), sorted(alphas), sorted(kinds), dict(source.metadata),
                          _trigger_words(source.metadata), components, a.unmatched,
                          d.note if d and not ambiguous else "", d.candidates if d else [], d.evidence if d else [],
                          ambiguous, d.undecided if d else [])
    finally:
        source.close()
