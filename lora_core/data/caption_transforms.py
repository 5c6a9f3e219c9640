"""Per-step caption transforms (kohya's): caption dropout, tag dropout and tag shuffling with kept tokens.

They run when the trainer draws a step's randomness: each sample's cond is a StepCaption whose
draw(generator) picks the text for this step from the run's generator (so runs and resumes are exact)
and returns that text's conditioning. Each distinct text is encoded once (the `encode` callable memoises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import DatasetError


@dataclass(frozen=True)
class CaptionTransforms:
    dropout: float = 0.0  # probability that a step trains this sample on the empty caption
    tag_dropout: float = 0.0  # probability of dropping each shufflable tag
    shuffle: bool = False  # shuffle the comma-separated tags after the kept ones
    keep_tokens: int = 0  # leading tags that stay in place (and are never dropped), e.g. the trigger word
    keep_separator: str = ""  # kohya's keep_tokens_separator: everything before it stays in place

    def __post_init__(self) -> None:
        for name in ("dropout", "tag_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise DatasetError(f"caption {name} must be between 0 and 1, got {value}")
        if self.keep_tokens < 0:
            raise DatasetError(f"keep_tokens must be >= 0, got {self.keep_tokens}")

    @property
    def active(self) -> bool:
        """Whether captions change from step to step (then the CLIP path is needed to encode them)."""
        return self.dropout > 0 or self.tag_dropout > 0 or self.shuffle

    def apply(self, caption: str, generator: torch.Generator) -> str:
        """The caption used for one step; draws from `generator` only what the enabled transforms need."""
        if self.dropout > 0 and float(torch.rand((), generator=generator)) < self.dropout:
            return ""
        if not (self.shuffle or self.tag_dropout > 0):
            return caption
        fixed, tags = self._split(caption)
        if self.tag_dropout > 0 and tags:
            keep = torch.rand(len(tags), generator=generator) >= self.tag_dropout
            tags = [t for t, k in zip(tags, keep.tolist()) if k]
        if self.shuffle and len(tags) > 1:
            tags = [tags[i] for i in torch.randperm(len(tags), generator=generator).tolist()]
        return ", ".join(fixed + tags)

    def _split(self, caption: str) -> tuple[list[str], list[str]]:
        """(tags kept in place, tags that may move or drop)."""
        if self.keep_separator and self.keep_separator in caption:
            head, tail = caption.split(self.keep_separator, 1)
            return _tags(head), _tags(tail)
        tags = _tags(caption)
        return tags[: self.keep_tokens], tags[self.keep_tokens:]


def without_separator(caption: str, separator: str) -> str:
    """The caption as encoded when it is not transformed: kohya's separator is never shown to the encoder."""
    if not separator or separator not in caption:
        return caption
    head, tail = caption.split(separator, 1)
    return ", ".join(_tags(head) + _tags(tail))


def _tags(text: str) -> list[str]:
    return [t for t in (part.strip() for part in text.split(",")) if t]


class StepCaption:
    """A sample's cond that varies per step: draw(generator) -> encode(the step's caption)."""

    def __init__(self, caption: str, transforms: CaptionTransforms, encode: Callable[[str], Any]):
        self.caption = caption
        self.transforms = transforms
        self.encode = encode

    def draw(self, generator: torch.Generator) -> Any:
        return self.encode(self.transforms.apply(self.caption, generator))
