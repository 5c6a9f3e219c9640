"""Read a LoRA's structure (keys, shapes, metadata) into resolved modules - no tensor data besides alphas."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..lora_core.errors import LoraFormatError
from .conversion_error import NotALoraError
from .detect import describe_format, detect_family, detect_variant
from .families import Family
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

    def loader(self, fetch):
        """load(ref) -> ModuleWeights, reading tensors through `fetch` (real or meta); alphas are always real."""

        def alpha_value(key: str) -> float:
            return float(self.source.get(key).float().reshape(-1)[0].item())

        return lambda ref: load_module(ref, fetch, alpha_value, self.peft.get(ref.component))


def _looks_like_checkpoint(keys: list[str]) -> bool:
    return sum(k.endswith((".weight", ".bias")) for k in keys) >= max(1, len(keys) // 2)


def _not_lora_weight(key: str) -> str | None:
    return next((why for prefix, why in _NOT_LORA_WEIGHTS.items() if key.startswith(prefix)), None)


def analyse(source: TensorSource, arch: str | None = None) -> Analysis:
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
    family = detect_family(source, modules, arch)
    missing = resolve(modules, family)
    refs = [r for r in modules.values() if r.match is not None]
    report = [UnmatchedKey(k, "not an adapter tensor (unknown key format)") for k in foreign]
    for ref in missing:
        what = "text encoder" if ref.component != "model" else family.name
        report += [UnmatchedKey(k, f"no {what} module named {ref.raw_name!r}") for k in ref.keys.values()]
    return Analysis(source, family, detect_variant(family, source, modules), describe_format(modules, source),
                    refs, report, dropped, configs_from_metadata(source.metadata, source.path))
