"""LoKr: Delta W = scale * kron(W1, W2), the layer's (out, in) split as (a*b, c*d) by `factor`.

W1 (a, c) holds the smaller factors, W2 (b, d[, *kernel]) the larger; each is a full matrix or, when the
rank is below half its size, a rank-r product (W1 only with decompose_both), as in LyCORIS. The scale is
alpha / r when a factor is decomposed, else 1 (ComfyUI's loader and LyCORIS ignore alpha then).

The side path never builds Delta W: with x's channels split (c, d),
    linear:  y = W1 X W2^T          conv:  y[a, b] = sum_c W1[a, c] conv(x[c, :], W2)[b]
Saved as lokr_w1 or lokr_w1_a/lokr_w1_b, lokr_w2 or lokr_w2_a/lokr_w2_b (w2_b flat: (r, d*k)), and alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..errors import TrainingError
from .base import Adapter, Geometry, ModuleWeights, cpu_copy, kaiming_uniform


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n), m <= n, m * n = dimension, m the largest divisor <= factor (<= sqrt(dimension)); -1: balanced."""
    limit = math.isqrt(dimension) if factor <= 0 else min(factor, math.isqrt(dimension))
    m = max(d for d in range(1, limit + 1) if dimension % d == 0)
    return m, dimension // m


def lokr_delta(w1: torch.Tensor, w2: torch.Tensor, scale: float) -> torch.Tensor:
    """Delta W = scale * (W1 kron W2); a conv's W2 keeps its kernel (W1 gets size-1 kernel dims to match)."""
    if w2.dim() > 2:
        w1 = w1.reshape(*w1.shape, *[1] * (w2.dim() - 2))
    return scale * torch.kron(w1, w2)


@dataclass
class LokrWeights(ModuleWeights):
    """tensors: lokr_w1 | lokr_w1_a + lokr_w1_b, lokr_w2 | lokr_w2_a + lokr_w2_b. weight_shape: the layer's."""

    parts: dict[str, torch.Tensor]
    alpha: float
    weight_shape: tuple[int, ...] = field(default_factory=tuple)
    kind: ClassVar[str] = "lokr"

    @property
    def rank(self) -> int | None:
        for role in ("lokr_w2_b", "lokr_w1_b"):  # ComfyUI: w2's rank wins when both are decomposed
            if role in self.parts:
                return int(self.parts[role].shape[0])
        return None

    @property
    def scale(self) -> float:
        return 1.0 if self.rank is None else float(self.alpha) / self.rank

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.parts)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = {k: v.float() for k, v in self.parts.items()}
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
        return w1, w2

    def delta(self) -> torch.Tensor:
        d = lokr_delta(*self.factors(), self.scale)
        return d.reshape(self.weight_shape) if self.weight_shape else d


class LokrAdapter(Adapter):
    kind = "lokr"

    def __init__(self, geo: Geometry, parts: dict[str, torch.Tensor], alpha: float, dropout: float = 0.0):
        super().__init__(geo, alpha, dropout)
        self.parts = nn.ParameterDict({k: nn.Parameter(v.detach().float().clone()) for k, v in parts.items()})
        self.w1_rows = int((parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"]).shape[0])
        self.w1_cols = int((parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_b"]).shape[1])

    @property
    def scale(self) -> float:
        """alpha / r of the decomposed factor (w2's first, as ComfyUI), else 1."""
        for role in ("lokr_w2_b", "lokr_w1_b"):
            if role in self.parts:
                return self.alpha / int(self.parts[role].shape[0])
        return 1.0

    def _factors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = {k: self.cast(v, like) for k, v in self.parts.items()}
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
        b, d = w2.shape[0], self.geometry.in_features // self.w1_cols
        return w1, w2.reshape(b, d, *self.geometry.kernel)

    def h(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        w1, w2 = self._factors(x)
        (a, c), b, d = w1.shape, w2.shape[0], w2.shape[1]
        if self.geometry.conv is None:
            y = w1 @ (x.reshape(*x.shape[:-1], c, d) @ w2.transpose(0, 1))  # (..., a, b)
            return y.reshape(*x.shape[:-1], a * b) * self.scale
        n, spatial = x.shape[0], x.shape[2:]
        per_group = self.geometry.apply(x.reshape(n * c, d, *spatial), w2)  # (n*c, b, *out_spatial)
        per_group = per_group.reshape(n, c, b, *per_group.shape[2:])
        return torch.einsum("ac,ncb...->nab...", w1, per_group).reshape(n, a * b, *per_group.shape[3:]) * self.scale

    def weights(self) -> LokrWeights:
        return LokrWeights({k: cpu_copy(v) for k, v in self.parts.items()}, self.alpha, self.geometry.weight_shape)

    @classmethod
    def create(cls, geo: Geometry, rank: int, alpha: float, dropout: float, generator: torch.Generator,
               factor: int = -1, decompose_both: bool = False, name: str = "", **_) -> "LokrAdapter":
        """LyCORIS' init: W1 (or W1a, W1b) and W2a kaiming-uniform, W2 (or W2b) zero, so Delta W starts at 0."""
        if factor > 0 and factor > min(geo.out_features, geo.in_features):
            raise TrainingError(
                f"LoKr factor {factor} is larger than layer {name or '?'} (out={geo.out_features}, "
                f"in={geo.in_features}); use a factor <= {min(geo.out_features, geo.in_features)} or -1 (balanced)")
        a, b = factorization(geo.out_features, factor)
        c, d = factorization(geo.in_features, factor)
        k = math.prod(geo.kernel)
        parts: dict[str, torch.Tensor] = {}
        if not decompose_both or rank >= max(a, c) / 2:
            parts["lokr_w1"] = kaiming_uniform((a, c), c, generator)
        else:
            parts["lokr_w1_a"] = kaiming_uniform((a, rank), rank, generator)
            parts["lokr_w1_b"] = kaiming_uniform((rank, c), c, generator)
        if rank >= max(b, d) / 2:
            parts["lokr_w2"] = torch.zeros((b, d, *geo.kernel))
        else:
            parts["lokr_w2_a"] = kaiming_uniform((b, rank), rank, generator)
            parts["lokr_w2_b"] = torch.zeros((rank, d * k))
        return cls(geo, parts, alpha, dropout)

    @classmethod
    def from_weights(cls, geo: Geometry, weights: LokrWeights) -> "LokrAdapter":
        w1, w2 = weights.factors()
        out, inner = w1.shape[0] * w2.shape[0], w1.shape[1] * (w2.shape[1] if w2.dim() > 2 else w2.shape[1] // max(1, math.prod(geo.kernel)))
        if (out, inner) != (geo.out_features, geo.in_features):
            raise TrainingError(f"LoKr factors {tuple(w1.shape)} x {tuple(w2.shape)} do not fit layer "
                                f"(out={geo.out_features}, in={geo.in_features}, kernel={geo.kernel})")
        return cls(geo, weights.parts, weights.alpha)
