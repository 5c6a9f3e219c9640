"""LoHa: Delta W = scale * (W1a W1b) * (W2a W2b)  (element-wise product of two rank-r products, so its
rank reaches r^2 for 4 r (out + in) parameters),  scale = alpha / r.

The Hadamard product does not factor through x, so the side path builds Delta W (out x in*k) for the step,
as LyCORIS' and ComfyUI's bypass do; it is transient and never added to the shared base weight.
Saved as LyCORIS' hada_w1_a (out, r), hada_w1_b (r, in*k), hada_w2_a, hada_w2_b and alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import TrainingError
from .base import Adapter, Geometry, ModuleWeights, cpu_copy

ROLES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


def loha_delta(w1_a: torch.Tensor, w1_b: torch.Tensor, w2_a: torch.Tensor, w2_b: torch.Tensor,
               scale: float) -> torch.Tensor:
    """Delta W = scale * (W1a W1b) . (W2a W2b), the Hadamard product of two low-rank matrices: (out, in*k)."""
    return scale * ((w1_a @ w1_b) * (w2_a @ w2_b))


@dataclass
class LohaWeights(ModuleWeights):
    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    alpha: float
    kernel: tuple[int, ...] = ()
    kind: ClassVar[str] = "loha"

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(zip(ROLES, (self.w1_a, self.w1_b, self.w2_a, self.w2_b)))

    def delta(self) -> torch.Tensor:
        delta = loha_delta(self.w1_a.float(), self.w1_b.float(), self.w2_a.float(), self.w2_b.float(), self.scale)
        in_features = self.w1_b.shape[1] // max(1, _prod(self.kernel))
        return delta.reshape(self.w1_a.shape[0], in_features, *self.kernel)


def _prod(kernel: tuple[int, ...]) -> int:
    n = 1
    for k in kernel:
        n *= k
    return n


class LohaAdapter(Adapter):
    kind = "loha"

    def __init__(self, geo: Geometry, w1_a, w1_b, w2_a, w2_b, alpha: float, dropout: float = 0.0):
        super().__init__(geo, alpha, dropout)
        self.w1_a, self.w1_b, self.w2_a, self.w2_b = (nn.Parameter(t.detach().float().clone()) for t in (w1_a, w1_b, w2_a, w2_b))

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self, like: torch.Tensor) -> torch.Tensor:
        c = lambda t: self.cast(t, like)  # noqa: E731
        product = (c(self.w1_a) @ c(self.w1_b)) * (c(self.w2_a) @ c(self.w2_b))
        return (product * self.scale).reshape(self.geometry.weight_shape)

    def h(self, x: torch.Tensor) -> torch.Tensor:
        return self.geometry.apply(self.dropout(x), self.delta_weight(x))

    def weights(self) -> LohaWeights:
        return LohaWeights(*(cpu_copy(t) for t in (self.w1_a, self.w1_b, self.w2_a, self.w2_b)), alpha=self.alpha,
                           kernel=self.geometry.kernel)

    @classmethod
    def create(cls, geo: Geometry, rank: int, alpha: float, dropout: float, generator: torch.Generator, **_) -> "LohaAdapter":
        """LyCORIS' init: W1b, W2b ~ N(0, 1), W1a ~ N(0, 0.1^2), W2a = 0 (so Delta W starts at 0)."""
        if rank < 1:
            raise TrainingError(f"LoHa rank must be >= 1, got {rank}")
        out, fan_in = geo.out_features, geo.fan_in
        w1_b = torch.randn((rank, fan_in), generator=generator)
        w1_a = torch.randn((out, rank), generator=generator) * 0.1
        w2_b = torch.randn((rank, fan_in), generator=generator)
        w2_a = torch.zeros((out, rank))
        return cls(geo, w1_a, w1_b, w2_a, w2_b, alpha, dropout)

    @classmethod
    def from_weights(cls, geo: Geometry, weights: LohaWeights) -> "LohaAdapter":
        if weights.w1_a.shape[0] != geo.out_features or weights.w1_b.shape[1] != geo.fan_in:
            raise TrainingError(f"LoHa shapes w1_a={tuple(weights.w1_a.shape)} w1_b={tuple(weights.w1_b.shape)} do not "
                                f"fit layer (out={geo.out_features}, in*k={geo.fan_in})")
        return cls(geo, weights.w1_a, weights.w1_b, weights.w2_a, weights.w2_b, weights.alpha)
