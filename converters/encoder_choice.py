"""Which LLM text encoder a file's text-encoder modules train: measured (width, MLP, q and k/v rows) and matched
against the encoders each family loads - exactly at full size, by the ratios to the width otherwise (a size not
listed, or the small test models keep every ratio)."""

from __future__ import annotations

from fractions import Fraction

from .evidence import shape_of
from .families import FAMILIES, Family
from .families import llm_text_encoders as llm
from .lora_index import ModuleRef
from .source import TensorSource

Dims = dict[str, int]  # "width", "mlp", "q", "kv": what the modules show


def measure(source: TensorSource, te_refs: list[ModuleRef]) -> Dims:
    dims: Dims = {}
    for ref in te_refs:
        m = llm.match(ref.raw_name, ref.flat)
        if m is None:
            continue
        rows, cols = shape_of(source, ref)
        module = m.name.rsplit(".", 1)[1]
        if module in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") and cols:
            dims.setdefault("width", cols)
        if module == "down_proj" and cols:
            dims.setdefault("mlp", cols)
        if module in ("gate_proj", "up_proj") and rows:
            dims.setdefault("mlp", rows)
        if module == "q_proj" and rows:
            dims.setdefault("q", rows)
        if module in ("k_proj", "v_proj") and rows:
            dims.setdefault("kv", rows)
    return dims


def fits(encoder: llm.LlmEncoder, dims: Dims, exact: bool) -> bool:
    if exact:
        return all(getattr(encoder, k) == v for k, v in dims.items())
    w = dims.get("width")
    return w is not None and all(Fraction(v, w) == Fraction(getattr(encoder, k), encoder.width) for k, v in dims.items())


def encoders(family: Family, dims: Dims) -> list[llm.LlmEncoder]:
    """The family's encoders these dimensions fit: at full size if any does, else by ratios."""
    if not dims:
        return list(family.llm_encoders)
    found = [e for e in family.llm_encoders if fits(e, dims, True)]
    return found or [e for e in family.llm_encoders if fits(e, dims, False) and not _known_width(dims)]


def _known_width(dims: Dims) -> bool:
    return any(e.width == dims.get("width") for f in FAMILIES.values() for e in f.llm_encoders)


def choose(family: Family, dims: Dims) -> llm.LlmEncoder | None:
    """The family's encoder of these dimensions; its only one also when they say nothing or fit a size not
    listed; never one that another encoder's full size contradicts."""
    found = encoders(family, dims)
    if found and len({(e.comfy, e.diffusers, e.hf_path) for e in found}) == 1:
        return found[0]
    if len(family.llm_encoders) == 1 and not _known_width(dims):
        return family.llm_encoders[0]
    return None


def describe(dims: Dims) -> str:
    return ", ".join(f"{k} {v}" for k, v in dims.items()) or "no sizes"
