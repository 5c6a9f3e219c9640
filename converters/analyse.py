"""Read a LoRA's structure (keys, shapes, metadata) into resolved modules - no tensor data besides alphas."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..lora_core.errors import LoraFormatError
from .conversion_error import NotALoraError
from .detect import Detection, describe_format, detect, detect_variant
from .families import Family
from .families import llm_text_encoders as llm
from .lora_index import ModuleRef, check_shapes, group_keys, load_module, resolve
from .peft_metadata import PeftConfig, configs_from_metadata
from .report import UnmatchedKey
from .source import TensorSource

# Keys some trainers store beside the LoRA that are not LoRA weights (no loader applies them as such).
_NOT_LORA_WEIGHTS = {"bundle_emb.": "textual-inversion embedding bundled with the LoRA (ComfyUI loads embeddings "
                                    "from models/embeddings, not from a LoRA file)"}


@dataclass
class Analysis:
    source: TensorSource
    family: Family
    variant: str
    format: str
    refs: list[ModuleRef]
    unmatched: list[UnmatchedKey] = field(default_factory=list)  # keys that cannot be converted, with why
    dropped: list[UnmatchedKey] = field(default_factory=list)  # keys with nothing to convert, with why
    peft: dict[str, PeftConfig] = field(default_factory=dict)
    detection: Detection | None = None  # how the family was chosen, the other candidates and the evidence

    def loader(self, fetch):
        """load(ref) -> ModuleWeights, reading tensors through `fetch` (real or meta); alphas are always real."""

        def alpha_value(key: str) -> float:
            return float(self.source.get(key).float().reshape(-1)[0].item())

        def config(ref: ModuleRef) -> PeftConfig | None:
            # a denoiser module that diffusers keeps in a pipeline component of its own (Anima's text_conditioner)
            own = next((c for c in self.family.components if ref.raw_name.startswith(c + ".")), None)
            return self.peft.get(own or ref.component)

        return lambda ref: load_module(ref, fetch, alpha_value, config(ref))


def _looks_like_checkpoint(keys: list[str]) -> bool:
    return sum(k.endswith((".weight", ".bias")) for k in keys) >= max(1, len(keys) // 2)


def _not_lora_weight(key: str) -> str | None:
    return next((why for prefix, why in _NOT_LORA_WEIGHTS.items() if key.startswith(prefix)), None)


def analyse(source: TensorSource, arch: str | None = None, hint: str | None = None,
            allow_ambiguous: bool = False, to: str | None = None) -> Analysis:
    """hint: the family of the model the LoRA is for (a connected MODEL), used when the keys fit several.
    allow_ambiguous: describe a file whose family the keys do not tell (inspect) instead of refusing it.
    to: the form it is converted to, when it is (families that write it alike there are not ambiguous)."""
    where = source.path or "state dict"
    keys = source.keys()
    if not keys:
        raise NotALoraError(f"{where}: contains no tensors")
    modules, orphans, foreign = group_keys(source)
    dropped = [UnmatchedKey(u.key, u.reason) for u in orphans]
    dropped += [UnmatchedKey(k, _not_lora_weight(k)) for k in foreign if _not_lora_weight(k)]
    foreign = [k for k in foreign if not _not_lora_weight(k)]
    if not modules:
        if _looks_like_checkpoint(foreign):
            raise NotALoraError(f"{where}: looks like a full model checkpoint ({len(foreign)} tensors such as "
                                f"{foreign[0]!r}), not a LoRA")
        example = foreign[0] if foreign else (orphans[0].key if orphans else dropped[0].key)
        raise LoraFormatError(f"{where}: no LoRA weights found (keys such as {example!r})")
    if len(foreign) > 4 * len(modules) and _looks_like_checkpoint(foreign):
        raise NotALoraError(f"{where}: looks like a full model checkpoint with {len(foreign)} plain weights "
                            f"(e.g. {foreign[0]!r}), not a LoRA")
    for ref in modules.values():
        check_shapes(source, ref)
    detection = detect(source, modules, arch, hint, allow_ambiguous, to)
    family = detection.family
    missing = resolve(modules, family)
    refs = [r for r in modules.values() if r.match is not None]
    report = [UnmatchedKey(k, "not an adapter tensor (unknown key format)") for k in foreign]
    for ref in missing:
        reason = f"no {family.name} module named {ref.raw_name!r}"
        if ref.component != "model":
            reason = f"no text encoder module named {ref.raw_name!r}" + _llm_note(family, ref)
        report += [UnmatchedKey(k, reason) for k in ref.keys.values()]
    return Analysis(source, family, detect_variant(family, source, modules, detection.variant),
                    describe_format(modules, source), refs, report, dropped,
                    configs_from_metadata(source.metadata, source.path), detection)


def _llm_note(family: Family, ref: ModuleRef) -> str:
    """Why an LLM text-encoder module found no home: the family has no such encoder, or none of this width."""
    if llm.match(ref.raw_name, ref.flat) is None:
        return ""
    if not family.llm_encoders:
        return f" ({family.name} has no LLM text encoder)"
    return (f" (an LLM text encoder, but none {family.name} loads has its width: "
            f"{', '.join(f'{e.name} {e.width}' for e in family.llm_encoders)})")
