"""What every adapter algorithm shares: the adapted layer's geometry, the bypass contract, the saved form.

A bypass adapter leaves the layer as it is and adds a side path to its output (ComfyUI's
comfy/weight_adapter and LyCORIS lay algorithms out the same way):

    y = layer(x) + multiplier * h(x)            h(x) = Delta W applied to dropout(x), scale included

Weights stay an fp32 master copy; h casts them to x's dtype/device, so adapters follow autocast and
ComfyUI's cast-in-forward layers. At multiplier t the result equals the layer with weight W + t Delta W,
which is how ComfyUI's loader applies a file at strength t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError
from .layer_kinds import is_linear

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# (module, like) -> (weight, bias, release): the layer's effective base weight (frozen_layers.WeightFetch)
Fetch = Callable[[nn.Module, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None, Callable[[], None]]"]


def is_adaptable(module: nn.Module) -> bool:
    """Linear (layer_kinds.is_linear) or ungrouped Conv1/2/3d (comfy.ops layers subclass these)."""
    if is_linear(module):
        return True
    return isinstance(module, _CONVS) and module.groups == 1


@dataclass(frozen=True)
class Geometry:
    """Shape of the adapted layer's weight (out, in, *kernel) and, for convs, how it is applied."""

    out_features: int
    in_features: int
    kernel: tuple[int, ...] = ()
    conv: dict[str, Any] | None = None  # dims, stride, padding, dilation, padding_mode, reversed_padding

    @property
    def fan_in(self) -> int:
        return self.in_features * math.prod(self.kernel)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features, *self.kernel)

    def apply(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x through a layer of this geometry with `weight` (no bias)."""
        if self.conv is None:
            return F.linear(x, weight)
        geo, conv_fn = self.conv, CONV_FN[self.conv["dims"]]
        if geo["padding_mode"] != "zeros":  # same rule as nn.ConvNd._conv_forward
            x = F.pad(x, geo["reversed_padding"], mode=geo["padding_mode"])
            return conv_fn(x, weight, None, geo["stride"], 0, geo["dilation"])
        return conv_fn(x, weight, None, geo["stride"], geo["padding"], geo["dilation"])


def geometry(module: nn.Module) -> Geometry:
    """From module attributes, never from the weight (it may live elsewhere or be quantised)."""
    if is_linear(module):
        return Geometry(int(module.out_features), int(module.in_features))
    if isinstance(module, _CONVS):
        if module.groups != 1:
            raise TrainingError(f"grouped convolution (groups={module.groups}) cannot carry a LoRA")
        conv = {"dims": len(module.kernel_size), "stride": module.stride, "padding": module.padding,
                "dilation": module.dilation, "padding_mode": module.padding_mode,
                "reversed_padding": getattr(module, "_reversed_padding_repeated_twice", None)}
        return Geometry(int(module.out_channels), int(module.in_channels), tuple(int(k) for k in module.kernel_size), conv)
    raise TrainingError(f"cannot put a LoRA on {type(module).__name__}: only Linear and Conv1d/2d/3d")


def kaiming_uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """kaiming_uniform(a=sqrt(5)) as torch / PEFT / kohya / LyCORIS init A: bound 1/sqrt(fan_in)."""
    return (torch.rand(shape, generator=generator) * 2 - 1) / math.sqrt(fan_in)


class ModuleWeights:
    """The saved form of one adapted layer: tensors under their kohya/LyCORIS key suffixes, and alpha."""

    kind: ClassVar[str]
    alpha: float

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def scale(self) -> float:
        """Factor on the factor product at strength 1, as ComfyUI's loader computes it."""
        raise NotImplementedError

    def delta(self) -> torch.Tensor:
        """Delta W at strength 1 shaped like the layer's weight (DoRA's rescaling excluded)."""
        raise NotImplementedError


class Adapter(nn.Module):
    """A trainable side path for one layer."""

    kind: ClassVar[str]

    def __init__(self, geo: Geometry, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.geometry = geo
        self.alpha = float(alpha)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def scale(self) -> float:
        raise NotImplementedError

    def h(self, x: torch.Tensor) -> torch.Tensor:
        """Delta W applied to dropout(x), scale included, in x's dtype."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x)

    def bypass(self, module: nn.Module, x: torch.Tensor, base_out: torch.Tensor, multiplier: float) -> torch.Tensor:
        """The layer's output with this adapter at `multiplier` (x is the layer's input as it ran)."""
        return base_out + (multiplier * self.h(x)).to(base_out.dtype)

    def weights(self) -> ModuleWeights:
        """Detached CPU fp32 copy, for saving."""
        raise NotImplementedError

    def cast(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(device=like.device, dtype=like.dtype)  # differentiable; autocast may recast


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().clone()
