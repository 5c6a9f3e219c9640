"""One module's adapter weights in a format-neutral form, and its scale (alpha / rank, or rsLoRA's alpha / sqrt(rank))."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

# Roles a tensor can have inside one module (format-neutral names).
LORA_ROLES = ("down", "up", "mid")
LOHA_ROLES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_ROLES = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
EXTRA_ROLES = ("diff", "diff_b", "magnitude", "dora_scale", "bias")


@dataclass
class ModuleWeights:
    """kind: "lora" | "loha" | "lokr" | "diff" (only full deltas: .diff / .diff_b).

    magnitude: DoRA magnitude in PEFT layout (out,) - norms over each output row of W + delta.
    dora_scale: a ComfyUI/LyCORIS dora_scale on the *input* axis (1, in, ...) that has no PEFT layout; kept raw.
    diff_b: bias delta (added as is).
    """

    kind: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    alpha: float | None = None
    rslora: bool = False

    def get(self, role: str) -> Tensor | None:
        return self.tensors.get(role)

    @property
    def rank(self) -> int | None:
        t = self.tensors
        if self.kind == "lora":
            return int(t["down"].shape[0])
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[0])
        if self.kind == "lokr":
            if "lokr_w2_b" in t:
                return int(t["lokr_w2_b"].shape[0])
            if "lokr_w1_b" in t:
                return int(t["lokr_w1_b"].shape[0])
        return None

    @property
    def scale(self) -> float:
        """Multiplier applied to the factor product at strength 1 (missing alpha means 1, as in ComfyUI/PEFT)."""
        rank = self.rank
        if self.alpha is None or rank is None:
            return 1.0
        return self.alpha / (math.sqrt(rank) if self.rslora else rank)

    @property
    def out_features(self) -> int | None:
        t = self.tensors
        if self.kind == "lora":
            return int(t["up"].shape[0])
        if self.kind == "loha":
            return int(t["hada_w1_a"].shape[0])
        if self.kind == "lokr":
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"]
            w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"]
            return int(w1.shape[0] * w2.shape[0])
        if "diff" in t:
            return int(t["diff"].shape[0])
        if "diff_b" in t:
            return int(t["diff_b"].shape[0])
        return None

    @property
    def in_features(self) -> int | None:
        t = self.tensors
        if self.kind == "lora":
            return int(t["down"].shape[1])
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[1])
        if self.kind == "lokr":
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_b"]
            w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_b"]
            return int(w1.shape[1] * w2.shape[1])
        if "diff" in self.tensors and self.tensors["diff"].dim() > 1:
            return int(self.tensors["diff"].shape[1])
        return None

    def with_tensors(self, **updates) -> "ModuleWeights":
        tensors = {k: v for k, v in {**self.tensors, **updates}.items() if v is not None}
        return ModuleWeights(self.kind, tensors, self.alpha, self.rslora)


def as_matrix(t: Tensor) -> Tensor:
    """Conv (o, i, kh, kw) -> linear (o, i*kh*kw) view for factor maths."""
    return t.reshape(t.shape[0], -1)


def fold_mid(down: Tensor, mid: Tensor) -> Tensor:
    """LoCon Tucker: fold lora_mid (r, r, kh, kw) into lora_down (r, in, 1, 1) -> (r, in, kh, kw), exactly."""
    return torch.einsum("ri,orhw->oihw", down.reshape(down.shape[0], down.shape[1]).to(mid.dtype), mid)
