"""Detect a LoRA's model family from every key: which module names occur, widths, depth, shape ratios.

Every family is weighed on every module (evidence.py). The families that name the most modules and fit their
shapes best remain; when more than one remains, the conversion stops with the candidates and the evidence
(AmbiguousFamilyError) unless they all convert these keys identically, or the caller knows the target model
(`hint`: the family of the model the LoRA is for, e.g. the MODEL connected to a node).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..lora_core.errors import LoraFormatError
from . import encoder_choice
from .conversion_error import AmbiguousFamilyError
from .evidence import CONTRADICTED, Verdict, weigh
from .families import FAMILIES, GENERIC, Family, family_key, get_family, hunyuan_video, sana, wan
from .families import llm_text_encoders as llm
from .lora_index import ModuleRef
from .source import TensorSource

# Order of preference among families that convert a file identically (and the order candidates are listed in).
PRIORITY = ("flux", "sd3", "sana", "wan", "sd15", "sdxl", "hunyuan_video", "chroma", "qwen_image", "z_image",
            "lumina2", "flux2", "krea2", "hidream", "kandinsky5", "hunyuan_image21", "hunyuan_video15", "ltx2", "ltxv",
            "anima")


@dataclass
class Detection:
    family: Family
    how: str = "detected"  # "detected" | "--arch" | "model" (the hint) | "same conversion" | "ambiguous"
    candidates: list[str] = field(default_factory=list)  # the families the keys fit equally well
    evidence: list[str] = field(default_factory=list)
    variant: str | None = None
    hint: str | None = None

    @property
    def undecided(self) -> list[str]:
        """The families the file may be for, when the keys do not say and nothing named one (they convert alike):
        reports and metadata name all of them, never the one whose name map was used."""
        return list(self.candidates) if self.how == "same conversion" else []

    @property
    def note(self) -> str:
        """A few words for reports on how the family was chosen (empty when the keys alone say it)."""
        others = [c for c in self.candidates if c != self.family.name]
        if self.how == "model":
            return ("the connected model's family" + (f"; the keys also fit {', '.join(others)}" if others else ""))
        if self.how == "same conversion":
            return "the keys do not say which; they convert the same for each; --arch or a connected model names it"
        if self.how == "ambiguous":
            return f"ambiguous: the keys fit {', '.join(self.candidates)}"
        if self.hint and family_key(self.hint) not in (None, self.family.name):
            return f"the connected model is {self.hint}, but the keys are {self.family.name}'s"
        return ""


def _in_features(source: TensorSource, refs: list[ModuleRef], pattern: str) -> int | None:
    """Input width of the first module whose name matches `pattern` (from its down / A matrix)."""
    for ref in refs:
        if re.search(pattern, ref.raw_name) and "down" in ref.keys:
            return source.shape(ref.keys["down"])[1]
    return None


def _sd_family(source: TensorSource, refs: list[ModuleRef], components: set[str]) -> str | None:
    dim = _in_features(source, refs, r"attn2[._]to_k$")
    if dim == 768:
        return "sd15"
    if dim == 2048 or "te2" in components:
        return "sdxl"
    return None


def _signature(family: Family, ref: ModuleRef, to: str | None):
    """What converting this module to `to` (None: either form) writes, as far as the family decides it."""
    m = family.match(ref.raw_name, ref.flat)
    assert m is not None  # only the modules every candidate names are compared
    rule = m.rule
    parts = tuple(m.part_name(i) for i in range(len(rule.parts)))
    diffusers = m.name if m.side == "diffusers" else parts[0] if len(parts) == 1 else parts
    comfy = (m.original_name, m.part if m.side == "diffusers" else -1, rule.ratios,
             getattr(rule.swap, "__name__", None), rule.fused)
    return {"diffusers": diffusers, "comfyui": comfy}.get(to or "", (diffusers, comfy))


def _convert_alike(names: list[str], verdicts: dict[str, Verdict], refs: list[ModuleRef], te_refs: list[ModuleRef],
                   source: TensorSource, to: str | None) -> bool:
    """The families write every module of the file under the same names, in the same way, in `to` form (None:
    in both forms)."""
    fams = [_with_te(FAMILIES[n], source, te_refs) for n in names]
    refs = [r for r in refs if id(r) in verdicts[names[0]].hits]
    dora = any("magnitude" in r.keys or "dora_scale" in r.keys for r in refs)
    te = [(tuple(sorted(f.text_encoders.items())), f.encoder) if te_refs else () for f in fams]
    comfy = {(f.comfy_side, f.slice_prefix if dora else None, t) for f, t in zip(fams, te)}
    diffusers = {(f.diffusers_prefix, f.diffusers_supported, f.components, t) for f, t in zip(fams, te)}
    alike = {"comfyui": len(comfy) == 1, "diffusers": len(diffusers) == 1}
    if not (alike[to] if to else all(alike.values())):
        return False
    return all(len({_signature(f, r, to) for f in fams}) == 1 for r in refs)


def _te_only(source, te_refs, components, hint, where) -> Detection:
    if not any(llm.match(r.raw_name, r.flat) for r in te_refs):  # CLIP / T5 names: family-neutral
        return Detection(FAMILIES["sdxl" if "te2" in components else "sd15"])
    dims = encoder_choice.measure(source, te_refs)
    fits = [n for n in PRIORITY if encoder_choice.encoders(FAMILIES[n], dims)]
    fits = fits or [n for n in PRIORITY if FAMILIES[n].llm_encoders]
    evidence = [f"LLM text encoder ({encoder_choice.describe(dims)}): " + "; ".join(
        f"{n} ({', '.join(e.name for e in encoder_choice.encoders(FAMILIES[n], dims)) or 'no size listed'})"
        for n in fits)]
    name = family_key(hint) if hint else None
    if name is not None and name in fits:
        return Detection(FAMILIES[name].with_encoder(encoder_choice.choose(FAMILIES[name], dims)), "model", fits,
                         evidence, hint=hint)
    places = {(e.comfy, e.component, e.diffusers, e.hf_path) if e else None for n in fits
              for e in [encoder_choice.choose(FAMILIES[n], dims)]}
    family = FAMILIES[fits[0]].with_encoder(encoder_choice.choose(FAMILIES[fits[0]], dims))
    if len(fits) == 1:
        return Detection(family, "detected", fits, evidence, hint=hint)
    if len(places) == 1 and None not in places:
        return Detection(family, "same conversion", fits, evidence, hint=hint)
    raise AmbiguousFamilyError(where, fits, evidence)


def detect(source: TensorSource, modules: dict[tuple, ModuleRef], arch: str | None = None,
           hint: str | None = None, allow_ambiguous: bool = False, to: str | None = None) -> Detection:
    """to: the form the file is converted to ("comfyui" | "diffusers"); families that write it alike in that form
    are not ambiguous for this conversion. None: alike in both forms."""
    where = source.path or "state dict"
    refs = [r for r in modules.values() if r.component == "model"]
    te_refs = [r for r in modules.values() if r.component != "model"]
    components = {r.component for r in modules.values()}
    if arch:
        family = get_family(arch)
        return Detection(_with_te(family, source, te_refs), "--arch", hint=hint)
    if not refs:
        if not components:
            raise LoraFormatError(f"{where}: no LoRA module found")
        try:
            return _te_only(source, te_refs, components, hint, where)
        except AmbiguousFamilyError as e:
            if not allow_ambiguous:
                raise
            return Detection(FAMILIES[e.candidates[0]], "ambiguous", e.candidates, e.evidence, hint=hint)
    shapes: dict = {}
    verdicts = {n: weigh(FAMILIES[n], refs, source, shapes) for n in PRIORITY}
    best = max(len(v.hits) for v in verdicts.values())
    if best == 0:
        return Detection(GENERIC, hint=hint)  # no name map here: its own module names pass through to ComfyUI form
    tied = [n for n in PRIORITY if len(verdicts[n].hits) == best]
    fit = max(verdicts[n].fit for n in tied)
    candidates = [n for n in tied if verdicts[n].fit == fit]
    evidence = [f"{n}: names {best} of {len(refs)} modules" + (f"; {'; '.join(verdicts[n].notes[:3])}"
                                                                  if verdicts[n].notes else "") for n in tied]
    chosen, how = _choose(candidates, verdicts, source, refs, te_refs, components, hint, to)
    if chosen is None:
        if not allow_ambiguous:
            others = [n for n in tied if n not in candidates]
            raise AmbiguousFamilyError(where, candidates, [e for n, e in zip(tied, evidence) if n in candidates]
                                       + ([f"{', '.join(others)} fit the shapes less (lora-lab inspect shows why)"]
                                          if others else []))
        chosen, how = candidates[0], "ambiguous"
    _check_not_mixed(chosen, verdicts, refs, where)
    verdict = verdicts[chosen]
    return Detection(_with_te(FAMILIES[chosen], source, te_refs), how, candidates, evidence,
                     verdict.variant.name if verdict.variant else None, hint)


def _choose(candidates, verdicts: dict[str, Verdict], source, refs, te_refs, components, hint, to):
    key = family_key(hint) if hint else None
    if key in candidates:
        return key, "model"
    if len(candidates) == 1:
        return candidates[0], "detected"
    if len({frozenset(verdicts[n].hits) for n in candidates}) > 1:
        return candidates[0], "detected"  # they name different modules: _check_not_mixed says the file mixes two
    if set(candidates) == {"sd15", "sdxl"}:
        sd = _sd_family(source, refs, components)
        return sd, "detected"
    if _convert_alike(candidates, verdicts, refs, te_refs, source, to):
        return candidates[0], "same conversion"
    return None, "ambiguous"


def _check_not_mixed(chosen: str, verdicts: dict[str, Verdict], refs: list[ModuleRef], where: object) -> None:
    """Modules another (not ruled out) family names but the chosen one does not: two LoRAs in one file."""
    mine = verdicts[chosen].hits
    others = {n: v.hits - mine for n, v in verdicts.items() if n != chosen and v.fit != CONTRADICTED and v.hits - mine}
    if others:
        other, extra = max(others.items(), key=lambda kv: len(kv[1]))
        name = next(r.raw_name for r in refs if id(r) in extra)
        raise LoraFormatError(f"{where}: the file mixes two model families: {len(mine)} {chosen} modules "
                              f"and {len(extra)} {other} modules (e.g. {name!r})")


def _with_te(family: Family, source: TensorSource, te_refs: list[ModuleRef]) -> Family:
    if not family.llm_encoders:
        return family
    return family.with_encoder(encoder_choice.choose(family, encoder_choice.measure(source, te_refs)))


def detect_family(source: TensorSource, modules: dict[tuple, ModuleRef], arch: str | None) -> Family:
    return detect(source, modules, arch).family


def detect_variant(family: Family, source: TensorSource, modules: dict[tuple, ModuleRef],
                   sized: str | None = None) -> str:
    refs = [r for r in modules.values() if r.component == "model"]
    if family.name == "sana":
        width = _in_features(source, refs, r"(attn1[._]to_[qkv]|attn[._]qkv|attn[._]proj|attn1[._]to_out)")
        return sana.VARIANTS.get(width, f"sana (width {width})" if width else "sana")
    if family.name == "wan":
        i2v = any(m in r.raw_name for r in refs for m in wan.I2V_MARKERS)
        width = _in_features(source, refs, r"(self_attn[._][qkvo]|attn1[._]to_)")
        size = wan.VARIANTS.get(width, f"width {width}" if width else "")
        return f"wan {'i2v' if i2v else 't2v'}" + (f" ({size})" if size else "")
    if family.name == "hunyuan_video":
        channels = _in_features(source, refs, r"(img_in[._]proj|x_embedder[._]proj)$")
        i2v = any("I2V" in r.style for r in refs) or channels == hunyuan_video.I2V_IN_CHANNELS
        return "hunyuan_video i2v" if i2v else "hunyuan_video"
    if family.passthrough:
        return "generic (no name map: module names kept)"
    if family.name in ("flux2", "kandinsky5", "ltxv") and sized and sized != family.name:
        return sized  # sizes of one family that ComfyUI loads alike, named for the user
    return family.name


def describe_format(modules: dict[tuple, ModuleRef], source: TensorSource) -> str:
    styles = sorted({r.style for r in modules.values()})
    keys = " ".join(source.keys()[:2000])
    extras = []
    if "_lora.down." in keys or ".lora.down." in keys or "lora_linear_layer" in keys:
        extras.append("old diffusers")
    kinds = sorted({r.kind for r in modules.values()} - {"lora"})
    if any("magnitude" in r.keys or "dora_scale" in r.keys for r in modules.values()):
        kinds.append("dora")
    text = "+".join(styles) + (f" ({', '.join(extras)})" if extras else "")
    return text + (f" [{', '.join(kinds)}]" if kinds else "")
