"""Trained LoRA weights, independent of any model object: per-module (down, up, alpha)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import LoraFormatError


def kohya_name(module: str) -> str:
    """Default kohya key prefix: lora_unet_ + dotted path with dots -> underscores."""
    return "lora_unet_" + module.replace(".", "_")


@dataclass
class LoraModuleWeights:
    """One adapted layer. down: (r, in) or (r, in, *k); up: (out, r) or (out, r, 1, ...)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def delta(self) -> torch.Tensor:
        """scale * up @ down, shaped like the adapted layer's weight (out, in) or (out, in, *k)."""
        up = self.up.reshape(self.up.shape[0], self.rank).float()
        down = self.down.reshape(self.rank, -1).float()
        return (self.scale * (up @ down)).reshape(self.up.shape[0], *self.down.shape[1:])


@dataclass
class LoraWeights:
    """A whole LoRA: key = module path in the trained model."""

    modules: dict[str, LoraModuleWeights]
    metadata: dict[str, str] = field(default_factory=dict)

    def kohya_state_dict(
        self, name_fn: Callable[[str], str] = kohya_name, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        """Kohya keys: <name>.lora_down.weight, <name>.lora_up.weight, <name>.alpha (0-dim)."""
        out: dict[str, torch.Tensor] = {}
        for module in sorted(self.modules):
            w = self.modules[module]
            name = name_fn(module)
            if f"{name}.alpha" in out:
                raise LoraFormatError(f"two modules map to the same key {name!r} (second: {module!r})")
            out[f"{name}.lora_down.weight"] = _cast(w.down, dtype)
            out[f"{name}.lora_up.weight"] = _cast(w.up, dtype)
            out[f"{name}.alpha"] = torch.tensor(float(w.alpha), dtype=dtype or torch.float32)
        return out

    @classmethod
    def from_kohya_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        module_names: list[str],
        name_fn: Callable[[str], str] = kohya_name,
        metadata: dict[str, str] | None = None,
    ) -> "LoraWeights":
        """Inverse of kohya_state_dict given the model's module names; unmatched keys raise."""
        by_key = {name_fn(m): m for m in module_names}
        prefixes = {k.rsplit(".lora_", 1)[0] if ".lora_" in k else k.rsplit(".", 1)[0] for k in state_dict}
        modules: dict[str, LoraModuleWeights] = {}
        for prefix in sorted(prefixes):
            if prefix not in by_key:
                raise LoraFormatError(f"LoRA key {prefix!r} matches no module of the model")
            try:
                down = state_dict[f"{prefix}.lora_down.weight"].float()
                up = state_dict[f"{prefix}.lora_up.weight"].float()
            except KeyError as e:
                raise LoraFormatError(f"LoRA module {prefix!r} lacks {e.args[0]!r}") from None
            alpha_t = state_dict.get(f"{prefix}.alpha")
            alpha = float(alpha_t) if alpha_t is not None else float(down.shape[0])  # kohya: no alpha -> scale 1
            modules[by_key[prefix]] = LoraModuleWeights(down=down, up=up, alpha=alpha)
        return cls(modules=modules, metadata=dict(metadata or {}))


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach().to("cpu")
    return (t.to(dtype) if dtype is not None else t).contiguous()
