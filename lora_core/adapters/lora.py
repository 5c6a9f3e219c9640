"""LoRA (LoCon for convs): Delta W = scale * B A,  scale = alpha / rank.

A (down) has the layer's own geometry (kernel, stride, padding) and maps in -> rank; B (up) is a 1x1 map
rank -> out, so the side path never builds a full-size weight: h(x) = scale * B(A(x)).
Saved as kohya's lora_down.weight / lora_up.weight / alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError
from .base import CONV_FN, Adapter, Geometry, ModuleWeights, cpu_copy, kaiming_uniform


def lora_delta(up: torch.Tensor, down: torch.Tensor, scale: float) -> torch.Tensor:
    """Delta W = scale * B A on the (out, r) and (r, in*k) matrices: (out, in*k). The one LoRA delta (trained
    weights, converters, merge, bake)."""
    return scale * (up @ down)


@dataclass
class LoraModuleWeights(ModuleWeights):
    """down: (r, in) or (r, in, *k); up: (out, r) or (out, r, 1, ...); dora_scale: see dora.py."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    dora_scale: torch.Tensor | None = None
    kind: ClassVar[str] = "lora"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"lora_down.weight": self.down, "lora_up.weight": self.up}
        if self.dora_scale is not None:
            out["dora_scale"] = self.dora_scale
        return out

    def delta(self) -> torch.Tensor:
        """scale * up @ down, shaped like the adapted layer's weight (out, in) or (out, in, *k)."""
        up = self.up.reshape(self.up.shape[0], self.rank).float()
        down = self.down.reshape(self.rank, -1).float()
        return lora_delta(up, down, self.scale).reshape(self.up.shape[0], *self.down.shape[1:])


class LoraAdapter(Adapter):
    kind = "lora"

    def __init__(self, geo: Geometry, down: torch.Tensor, up: torch.Tensor, alpha: float, dropout: float = 0.0):
        super().__init__(geo, alpha, dropout)
        self.down = nn.Parameter(down.detach().float().clone())
        self.up = nn.Parameter(up.detach().float().clone())

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def low_rank(self, x: torch.Tensor) -> torch.Tensor:
        """scale * B(A(x)) without dropout."""
        down, up = self.cast(self.down, x), self.cast(self.up, x)
        if self.geometry.conv is None:
            return F.linear(F.linear(x, down), up) * self.scale
        return CONV_FN[self.geometry.conv["dims"]](self.geometry.apply(x, down), up) * self.scale

    def h(self, x: torch.Tensor) -> torch.Tensor:
        return self.low_rank(self.dropout(x))

    def weights(self) -> LoraModuleWeights:
        return LoraModuleWeights(down=cpu_copy(self.down), up=cpu_copy(self.up), alpha=self.alpha)

    @classmethod
    def create(cls, geo: Geometry, rank: int, alpha: float, dropout: float, generator: torch.Generator, **_) -> "LoraAdapter":
        """A ~ kaiming-uniform(a=sqrt(5)) as PEFT/kohya (bound 1/sqrt(fan_in)), B = 0."""
        if rank < 1:
            raise TrainingError(f"LoRA rank must be >= 1, got {rank}")
        down = kaiming_uniform((rank, geo.in_features, *geo.kernel), geo.fan_in, generator)
        up = torch.zeros((geo.out_features, rank, *(1 for _ in geo.kernel)))
        return cls(geo, down, up, alpha, dropout)

    @classmethod
    def from_weights(cls, geo: Geometry, weights: LoraModuleWeights) -> "LoraAdapter":
        down, up = weights.down, weights.up
        if tuple(down.shape[1:]) != (geo.in_features, *geo.kernel) or up.shape[0] != geo.out_features:
            raise TrainingError(
                f"LoRA shapes down={tuple(down.shape)} up={tuple(up.shape)} do not fit layer "
                f"(in={geo.in_features}, out={geo.out_features}, kernel={geo.kernel})")
        if geo.kernel and down.dim() == 2 + len(geo.kernel) and up.dim() == 2:
            up = up.reshape(*up.shape, *(1 for _ in geo.kernel))
        return cls(geo, down, up, weights.alpha)
