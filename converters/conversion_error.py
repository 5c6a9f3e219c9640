"""The one kind of reason a module is left unconverted: a conversion rule says it has no exact form."""

from __future__ import annotations

from ..lora_core.errors import LoraFormatError


class ConversionError(ValueError):
    """A module cannot be converted exactly into the target form (reported by name, never silently dropped).

    Only conversion rules raise it, with a sentence for the user; anything else that goes wrong is a bug and
    propagates."""


class NotALoraError(LoraFormatError):
    """The file holds tensors, but they are not a LoRA (e.g. a full model checkpoint)."""
