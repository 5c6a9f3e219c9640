"""Group a file's keys into modules (no tensor data read) and resolve each module against a family's name map."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..lora_core.errors import LoraFormatError
from .families import TEXT_ENCODER_INDEX, Family
from .families import llm_text_encoders as llm
from .families.rule import Match
from .key_format import ParsedKey, parse_key
from .module_weights import LOHA_ROLES, LOKR_ROLES, ModuleWeights
from .peft_metadata import PeftConfig
from .source import TensorSource


_COMFY_TE = re.compile(r"^(?:[a-z0-9_]+\.)?transformer\.")  # text_encoders.<attribute>.transformer.<module>


@dataclass
class ModuleRef:
    """One module as found in the file: its tensor keys by role, and where it sits in the family's name map."""

    component: str  # "model" | "te1" | "te2" | "te3" | "te4"
    raw_name: str
    flat: bool
    keys: dict[str, str] = field(default_factory=dict)  # role -> tensor key
    style: str = ""
    match: Match | None = None

    @property
    def kind(self) -> str:
        roles = set(self.keys)
        if roles & set(LOHA_ROLES):
            return "loha"
        if roles & set(LOKR_ROLES):
            return "lokr"
        if {"down", "up"} <= roles:
            return "lora"
        return "diff"

    @property
    def name(self) -> str:
        return self.match.name if self.match else self.raw_name


@dataclass
class Unmatched:
    key: str
    reason: str


def group_keys(source: TensorSource) -> tuple[dict[tuple, ModuleRef], list[Unmatched], list[str]]:
    """Modules keyed by (component, raw module name); alpha/DoRA tensors of modules without adapter weights
    (nothing to apply, so dropped by nature) and keys that are not adapter tensors are returned apart."""
    modules: dict[tuple, ModuleRef] = {}
    foreign: list[str] = []
    for key in source.keys():
        p: ParsedKey | None = parse_key(key)
        if p is None:
            foreign.append(key)
            continue
        ref = modules.setdefault((p.component, p.module), ModuleRef(p.component, p.module, p.flat, style=p.style))
        if p.role in ref.keys:
            raise LoraFormatError(f"{source.path or 'state dict'}: two tensors give {p.role!r} of module {p.module!r}: "
                                  f"{ref.keys[p.role]!r} and {key!r}")
        ref.keys[p.role] = key
    unmatched = []
    for (comp, name), ref in list(modules.items()):
        if set(ref.keys) <= {"alpha", "dora_scale", "magnitude"}:
            for k in ref.keys.values():
                unmatched.append(Unmatched(k, "alpha/DoRA tensor without adapter weights for its module "
                                              "(nothing to apply)"))
            del modules[(comp, name)]
        elif "down" in ref.keys and "up" not in ref.keys or "up" in ref.keys and "down" not in ref.keys:
            missing = "up" if "down" in ref.keys else "down"
            raise LoraFormatError(f"{source.path or 'state dict'}: module {name!r} has no {missing} (B/A) matrix")
    return modules, unmatched, foreign


def resolve(modules: dict[tuple, ModuleRef], family: Family) -> list[ModuleRef]:
    """Attach name-map matches; returns the modules that do not belong to `family`."""
    missing = []
    for ref in modules.values():
        index = family.index if ref.component == "model" else TEXT_ENCODER_INDEX
        ref.match = index.match(ref.raw_name, ref.flat)
        if ref.match is None and ref.component != "model" and not ref.flat:  # ComfyUI's <encoder>.transformer. path
            ref.match = index.match(_COMFY_TE.sub("", ref.raw_name, count=1), False)
        if ref.match is None and ref.component != "model" and family.encoder is not None:
            ref.match = llm.match(ref.raw_name, ref.flat)  # an LLM encoder's decoder layer, whatever its prefix
            if ref.match is not None:
                ref.component = family.encoder.component
        if ref.match is None:
            missing.append(ref)
    return missing


def check_shapes(source: TensorSource, ref: ModuleRef) -> None:
    """A/B rank mismatch and similar inconsistencies, named."""
    k = ref.keys
    if "down" in k and "up" in k:
        down, up = source.shape(k["down"]), source.shape(k["up"])
        if len(down) < 2 or len(up) < 2 or down[0] != up[1]:
            raise LoraFormatError(f"{source.path or 'state dict'}: inconsistent shapes in module {ref.raw_name!r}: "
                                  f"down/A {list(down)} and up/B {list(up)} disagree on the rank")
    if "alpha" in k and torch.Size(source.shape(k["alpha"])).numel() != 1:
        raise LoraFormatError(f"{source.path or 'state dict'}: alpha of {ref.raw_name!r} is not a scalar")


def load_module(ref: ModuleRef, fetch, alpha_value, peft: PeftConfig | None) -> ModuleWeights:
    """Read one module's tensors (real or meta) into the format-neutral form."""
    tensors: dict[str, Tensor] = {role: fetch(key) for role, key in ref.keys.items() if role != "alpha"}
    kind = ref.kind
    alpha, rslora = None, False
    if "alpha" in ref.keys:
        alpha = alpha_value(ref.keys["alpha"])
    elif peft is not None:
        alpha, rslora = peft.alpha_for(ref.raw_name), peft.use_rslora
    m = ModuleWeights(kind, tensors, alpha, rslora)
    dora = tensors.pop("dora_scale", None)
    if dora is not None:
        out = m.out_features
        if dora.shape[0] == out and (dora.dim() == 1 or torch.Size(dora.shape[1:]).numel() == 1):
            tensors["magnitude"] = dora.reshape(-1)  # output-axis dora_scale == PEFT magnitude layout
        else:
            tensors["dora_scale"] = dora
    if "magnitude" in tensors:
        tensors["magnitude"] = tensors["magnitude"].reshape(-1)
    bias = tensors.pop("bias", None)
    if bias is not None:  # PEFT lora_bias: the bias is inside lora_B, so it is scaled like the weights
        tensors["diff_b"] = (bias.float() * m.scale).to(bias.dtype)
    return m
