"""What a conversion or inspection found: format, family, counts, and every key that was not carried over."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UnmatchedKey:
    key: str
    reason: str


@dataclass
class ConvertReport:
    """`unmatched`: keys left unconverted (information lost), each with the rule that says why.
    `dropped`: keys that carry nothing to convert (e.g. an alpha without weights), with the reason stated."""

    source: str
    target: str
    format: str = ""
    family: str = ""
    variant: str = ""
    family_note: str = ""  # how the family was chosen when the keys alone do not say (detect.Detection.note)
    candidates: list[str] = field(default_factory=list)  # the keys fit these alike and none was named
    modules_in: int = 0
    modules_out: int = 0
    tensors_out: int = 0
    fused: int = 0
    split: int = 0
    sliced: int = 0
    unmatched: list[UnmatchedKey] = field(default_factory=list)
    dropped: list[UnmatchedKey] = field(default_factory=list)
    output: str | None = None

    @property
    def unmatched_count(self) -> int:
        return len(self.unmatched)

    @property
    def complete(self) -> bool:
        """Every key was converted or dropped by its nature."""
        return not self.unmatched

    def __str__(self) -> str:
        family = "one of " + ", ".join(self.candidates) if self.candidates else self.variant or self.family
        lines = [f"source:   {self.source}", f"format:   {self.format}",
                 f"family:   {family}" + (f" ({self.family_note})" if self.family_note else ""),
                 f"target:   {self.target}" + (f" -> {self.output}" if self.output else ""),
                 f"modules:  {self.modules_in} in, {self.modules_out} out ({self.fused} fused, {self.split} split"
                 + (f", {self.sliced} DoRA layers kept per part" if self.sliced else "")
                 + f"); {self.tensors_out} tensors written",
                 f"unconverted keys: {self.unmatched_count}"]
        lines += [f"  {u.key}: {u.reason}" for u in self.unmatched]
        if self.dropped:
            lines.append(f"dropped keys (nothing to convert): {len(self.dropped)}")
            lines += [f"  {u.key}: {u.reason}" for u in self.dropped]
        return "\n".join(lines)
