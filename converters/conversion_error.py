"""The one kind of reason a module is left unconverted: a conversion rule says it has no exact form."""

from __future__ import annotations

from ..lora_core.errors import LoraFormatError


class ConversionError(ValueError):
    """A module cannot be converted exactly into the target form (reported by name, never silently dropped).

    Only conversion rules raise it, with a sentence for the user; anything else that goes wrong is a bug and
    propagates."""


class NotALoraError(LoraFormatError):
    """The file holds tensors, but they are not a LoRA (e.g. a full model checkpoint)."""


class AmbiguousFamilyError(LoraFormatError):
    """The keys fit several model families that convert them differently: a decision the caller must make
    (--arch, the node's arch input, or the connected model), never a guess."""

    def __init__(self, where: object, candidates: list[str], evidence: list[str]):
        self.candidates, self.evidence = list(candidates), list(evidence)
        super().__init__(f"{where}: ambiguous model family: the keys fit {', '.join(candidates)}, which convert them "
                         f"differently; pass --arch (one of {', '.join(candidates)}). Evidence: "
                         + " | ".join(evidence))
