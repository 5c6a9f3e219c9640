"""Preservation captions and their conds: the caption with the trigger replaced by a class word (differential
output preservation) or the empty caption (blank-prompt preservation), one per training sample, encoded through
the captions' own encoder and cache and made into each sample's cond as its caption was."""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..cache.encoding_cache import EncodingCache
from ..errors import DatasetError
from .dataset_files import count, names
from .training_samples import Encoders, TrainingData, _TextEncodings


def preservation_caption(caption: str, trigger: str, class_word: str) -> str:
    """Each whole-word occurrence of `trigger` (any case) replaced by `class_word`; with no class word the trigger
    is removed and the commas it leaves are tidied ("sks, a dog" -> "a dog")."""
    trigger = trigger.strip()
    if not trigger:
        return caption
    text = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", class_word.strip(), caption, flags=re.IGNORECASE)
    text = re.sub(r"\s*,(\s*,)+", ",", " ".join(text.split()))
    return re.sub(r"\s+,", ",", text).strip(" ,")


def dop_captions(captions: Sequence[str], trigger: str, class_word: str) -> tuple[list[str], list[str]]:
    """(preservation caption per sample, warnings): a caption without the trigger is kept as it is, so its term
    asks the LoRA not to change what it was trained on; the warning names how many."""
    if not trigger.strip():
        raise DatasetError("Differential output preservation replaces the trigger word in each caption by the class "
                           "word: give the dataset a trigger_word (or the preservation node's trigger_word)")
    texts = [preservation_caption(c, trigger, class_word) for c in captions]
    missing = sorted({c for c, t in zip(captions, texts) if c == t})
    warnings = []
    if missing:
        warnings.append(f"{count(len(missing), 'caption')} without the trigger word {trigger.strip()!r}: differential "
                        f"output preservation keeps the LoRA from changing their output ({names(missing)})")
    return texts, warnings


def preservation_conds(data: TrainingData, encoders: Encoders, cache: EncodingCache, texts: Sequence[str],
                       what: str) -> list[Any]:
    """texts[i] encoded for sample i of `data`, as its caption was (same encoder, same cache keys, same make_cond)."""
    if encoders.encode_text is None:
        raise DatasetError(f"{what} needs Train LoRA's clip input: its captions are encoded there; a conditioning "
                           "list holds only the dataset's own captions")
    if len(texts) != len(data.samples) or len(data.infos) != len(data.samples):
        raise DatasetError(f"{what}: {len(texts)} captions for {len(data.samples)} samples")
    encoded = _TextEncodings(encoders, cache)
    return [encoders.make_cond(encoded.get(text), info) for text, info in zip(texts, data.infos)]
