"""What merge and resize did: per module its rank before and after and the relative error of its delta."""

from __future__ import annotations

from dataclasses import dataclass, field

from .report import UnmatchedKey


@dataclass
class ModuleResult:
    name: str
    rank_in: int | None
    rank_out: int | None
    error: float = 0.0  # ||dW - dW_out||_F / ||dW||_F; 0 for exact results
    note: str = ""


@dataclass
class CombineReport:
    command: str  # "merge" | "resize"
    inputs: list[str]
    family: str
    target: str
    output: str | None = None
    modules: list[ModuleResult] = field(default_factory=list)
    unmatched: list[UnmatchedKey] = field(default_factory=list)  # keys left out, with the rule that says why
    dropped: list[UnmatchedKey] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unmatched

    def leave_out(self, label: str, reason: str) -> None:
        """A module the output form cannot hold (a rule's verdict at write time): listed, not counted as done."""
        self.modules = [m for m in self.modules if m.name != label]
        self.unmatched.append(UnmatchedKey(label, reason))

    @property
    def errors(self) -> dict[str, float]:
        return {m.name: m.error for m in self.modules}

    def __str__(self) -> str:
        ranks = [m.rank_out for m in self.modules if m.rank_out is not None]
        errors = [m.error for m in self.modules]
        lines = [f"{self.command}:  {' + '.join(self.inputs)}", f"family:  {self.family}",
                 f"target:  {self.target}" + (f" -> {self.output}" if self.output else ""),
                 f"modules: {len(self.modules)}" + (f", rank {min(ranks)}..{max(ranks)}" if ranks else "")
                 + (f"; relative error max {max(errors):.4g}, mean {sum(errors) / len(errors):.4g}" if errors else "")]
        width = max((len(m.name) for m in self.modules), default=0)
        lines += [f"  {m.name:<{width}}  rank {m.rank_in if m.rank_in is not None else '-'} -> "
                  f"{m.rank_out if m.rank_out is not None else '-'}  error {m.error:.4g}" + (f"  ({m.note})" if m.note else "")
                  for m in self.modules]
        lines.append(f"unconverted keys: {len(self.unmatched)}")
        lines += [f"  {u.key}: {u.reason}" for u in self.unmatched]
        if self.dropped:
            lines.append(f"dropped keys (nothing to convert): {len(self.dropped)}")
            lines += [f"  {u.key}: {u.reason}" for u in self.dropped]
        return "\n".join(lines)
