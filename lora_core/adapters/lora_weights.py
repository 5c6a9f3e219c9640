"""Trained adapter weights, independent of any model object: per module its saved form (LoRA, LoHa,
LoKr, DoRA, OFT) and alpha, and the kohya/LyCORIS key layout ComfyUI's loader reads.

Module keys are paths in the trained model; text-encoder modules are "<component>:<path>" (te1, te2, te3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .base import ModuleWeights
from .loha import ROLES as LOHA_ROLES, LohaWeights
from .lokr import LokrWeights
from .lora import LoraModuleWeights
from .oft import OftWeights
from ..errors import LoraFormatError

__all__ = ["LoraModuleWeights", "LohaWeights", "LokrWeights", "OftWeights", "LoraWeights", "ModuleWeights",
           "kohya_name", "split_component"]

# every tensor suffix one module may have, longest first so that ".lokr_w1_a" is not read as ".lokr_w1"
SUFFIXES = ("lora_down.weight", "lora_up.weight", "dora_scale", *LOHA_ROLES,
            "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_w1", "lokr_w2", "oft_blocks", "rescale", "alpha")
TEXT_ENCODER_PREFIX = {"te1": "lora_te1_", "te2": "lora_te2_", "te3": "lora_te3_"}


def split_component(module: str) -> tuple[str, str]:
    """("model" | "te1" | ..., path) of a module key."""
    if ":" in module:
        component, path = module.split(":", 1)
        return component, path
    return "model", module


def kohya_name(module: str) -> str:
    """Default kohya key prefix: lora_unet_ (or lora_teN_) + dotted path with dots -> underscores."""
    component, path = split_component(module)
    return TEXT_ENCODER_PREFIX.get(component, "lora_unet_") + path.replace(".", "_")


def _module_weights(prefix: str, parts: dict[str, torch.Tensor], kernel: tuple[int, ...]) -> ModuleWeights:
    alpha_t = parts.pop("alpha", None)
    if "hada_w1_a" in parts:
        rank = int(parts["hada_w1_b"].shape[0])
        return LohaWeights(*(parts[r].float() for r in LOHA_ROLES), alpha=_alpha(alpha_t, rank), kernel=kernel)
    if "oft_blocks" in parts:
        return _oft_weights(prefix, parts, alpha_t)
    if any(k.startswith("lokr_") for k in parts):
        weights = LokrWeights({k: v.float() for k, v in parts.items()}, alpha=0.0)
        weights.alpha = _alpha(alpha_t, weights.rank or 1)
        return weights
    try:
        down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
    except KeyError as e:
        raise LoraFormatError(f"LoRA module {prefix!r} lacks {e.args[0]!r}") from None
    dora = parts.get("dora_scale")
    return LoraModuleWeights(down=down, up=up, alpha=_alpha(alpha_t, int(down.shape[0])),
                             dora_scale=None if dora is None else dora.float())


def _oft_weights(prefix: str, parts: dict[str, torch.Tensor], alpha_t: torch.Tensor | None) -> OftWeights:
    """OFT's alpha is its constraint; none means unconstrained (ComfyUI reads a missing alpha as 0)."""
    blocks = parts["oft_blocks"]
    if blocks.dim() != 3:
        raise LoraFormatError(f"LoRA module {prefix!r}: oft_blocks of shape {tuple(blocks.shape)} is BOFT or unknown; "
                              "only OFT's (blocks, n, n) is read")
    if "rescale" in parts:
        raise LoraFormatError(f"LoRA module {prefix!r} has an OFT rescale, which ComfyUI's loader does not apply; "
                              "LoRA Lab neither trains nor continues such files")
    return OftWeights(blocks.float(), alpha=float(alpha_t) if alpha_t is not None else 0.0)


def _alpha(alpha_t: torch.Tensor | None, rank: int) -> float:
    return float(alpha_t) if alpha_t is not None else float(rank)  # kohya: no alpha -> scale 1


@dataclass
class LoraWeights:
    """A whole LoRA: key = module path in the trained model (text encoders: "te1:<path>")."""

    modules: dict[str, ModuleWeights]
    metadata: dict[str, str] = field(default_factory=dict)

    def kohya_state_dict(
        self, name_fn: Callable[[str], str] = kohya_name, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        """Kohya/LyCORIS keys: <name>.<suffix> for each tensor, <name>.alpha (0-dim)."""
        out: dict[str, torch.Tensor] = {}
        for module in sorted(self.modules):
            w = self.modules[module]
            name = name_fn(module)
            if f"{name}.alpha" in out:
                raise LoraFormatError(f"two modules map to the same key {name!r} (second: {module!r})")
            for suffix, tensor in w.tensors().items():
                out[f"{name}.{suffix}"] = _cast(tensor, dtype)
            out[f"{name}.alpha"] = torch.tensor(float(w.alpha), dtype=dtype or torch.float32)
        return out

    @classmethod
    def from_kohya_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        module_names: list[str],
        name_fn: Callable[[str], str] = kohya_name,
        metadata: dict[str, str] | None = None,
        kernels: dict[str, tuple[int, ...]] | None = None,
    ) -> "LoraWeights":
        """Inverse of kohya_state_dict given the model's module names; unmatched keys raise.
        kernels: conv kernel per module, for LoHa/LoKr convs whose factors are stored flat."""
        by_key = {name_fn(m): m for m in module_names}
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in state_dict.items():
            suffix = next((s for s in SUFFIXES if key.endswith("." + s)), None)
            prefix, role = (key[: -len(suffix) - 1], suffix) if suffix else (key.rsplit(".", 1)[0], key.rsplit(".", 1)[-1])
            grouped.setdefault(prefix, {})[role] = tensor
        modules: dict[str, ModuleWeights] = {}
        for prefix in sorted(grouped):
            if prefix not in by_key:
                raise LoraFormatError(f"LoRA key {prefix!r} matches no module of the model")
            module = by_key[prefix]
            weights = _module_weights(prefix, dict(grouped[prefix]), (kernels or {}).get(module, ()))
            modules[module] = weights
        return cls(modules=modules, metadata=dict(metadata or {}))


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach().to("cpu")
    return (t.to(dtype) if dtype is not None else t).contiguous()
