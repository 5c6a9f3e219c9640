"""Caption files: reading, trigger words, templates and kohya-style tag counting."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..errors import DatasetError

TEMPLATE_FIELDS = ("trigger", "caption")
_FIELD = re.compile(r"\{([^{}]*)\}")


def read_caption(path: str | Path) -> tuple[str, bool]:
    """Return (caption, was_latin1): UTF-8 (BOM tolerated), else latin-1; whitespace and newlines collapsed.

    latin-1 decodes any byte string, so the fallback never fails; the flag lets the caller warn about it.
    """
    raw = Path(path).read_bytes()
    try:
        text, was_latin1 = raw.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        text, was_latin1 = raw.decode("latin-1"), True
    return " ".join(text.split()), was_latin1


def with_trigger(caption: str, trigger_word: str) -> str:
    """Prepend `trigger_word` (", "-joined) unless the caption already starts with it as a whole word."""
    trigger = trigger_word.strip()
    if not trigger:
        return caption
    if not caption:
        return trigger
    if re.match(re.escape(trigger) + r"(?!\w)", caption, flags=re.IGNORECASE):
        return caption
    return f"{trigger}, {caption}"


def apply_template(template: str, caption: str, trigger_word: str) -> str:
    """`template` with {trigger} and {caption} filled in; an empty template means with_trigger(caption, trigger).

    Commas and spaces left dangling by an empty field are tidied ("{trigger}, {caption}" with no trigger
    gives the caption alone). Any other {field} is an error naming it.
    """
    if not template.strip():
        return with_trigger(caption, trigger_word)
    check_template(template)
    text = template.replace("{trigger}", trigger_word.strip()).replace("{caption}", caption)
    text = re.sub(r"\s*,(\s*,)+", ",", " ".join(text.split()))  # ", ," left by an empty field
    text = re.sub(r",\s*([.;:!?])", r"\1", re.sub(r"\s+,", ",", text))
    return text.strip(" ,")


def check_template(template: str) -> None:
    unknown = [f for f in _FIELD.findall(template) if f not in TEMPLATE_FIELDS]
    if unknown:
        raise DatasetError(f"Caption template {template!r} has unknown field(s) "
                           f"{', '.join('{' + f + '}' for f in unknown)}: use {{trigger}} and {{caption}}")


def caption_tags(caption: str) -> list[str]:
    """Comma-separated tags, stripped, empties dropped (how kohya counts ss_tag_frequency)."""
    return [tag for tag in (part.strip() for part in caption.split(",")) if tag]


def tag_counts(captions: Iterable[str]) -> dict[str, int]:
    """How often each tag occurs over all captions (every occurrence counts, as in kohya)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(caption_tags(caption))
    return dict(counts)


def tag_frequency(captions: Iterable[str], dataset_name: str = "dataset") -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: {dataset: {tag: count}}, tags = comma-separated caption parts."""
    return {dataset_name: dict(sorted(tag_counts(captions).items()))}
