"""LoRA side paths ("bypass") for Linear and Conv layers (Conv = LoCon).

    y = layer(x) + multiplier * (alpha / rank) * B(A(dropout(x)))

A has the layer's own geometry (kernel, stride, padding) and maps in -> rank; B is a 1x1 map rank -> out.
Weights stay an fp32 master copy; in forward they are cast to the input's dtype/device, so the adapter
follows autocast and ComfyUI's cast-in-forward layers. No full-size weight delta is ever built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TrainingError
from .lora_weights import LoraModuleWeights

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def is_adaptable(module: nn.Module) -> bool:
    """Linear or ungrouped Conv1/2/3d (comfy.ops layers subclass these)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, _CONVS) and module.groups == 1


class LoraAdapter(nn.Module):
    """The side path of one layer: down (A) and up (B) weights plus the conv geometry of A."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, alpha: float, dropout: float = 0.0, conv: dict | None = None):
        super().__init__()
        self.down = nn.Parameter(down.detach().float().clone())
        self.up = nn.Parameter(up.detach().float().clone())
        self.alpha = float(alpha)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv = conv  # None for Linear; else dims + stride/padding/dilation/padding_mode of the base conv

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = self.down.to(device=x.device, dtype=x.dtype)  # differentiable cast; autocast may recast
        up = self.up.to(device=x.device, dtype=x.dtype)
        x = self.dropout(x)
        if self.conv is None:
            return F.linear(F.linear(x, down), up) * self.scale
        conv_fn = _CONV_FN[self.conv["dims"]]
        return conv_fn(_conv(x, down, self.conv, conv_fn), up) * self.scale

    def weights(self) -> LoraModuleWeights:
        """Detached CPU fp32 copy, for saving."""
        return LoraModuleWeights(down=self.down.detach().cpu().clone(), up=self.up.detach().cpu().clone(), alpha=self.alpha)


def _conv(x: torch.Tensor, weight: torch.Tensor, geo: dict, conv_fn) -> torch.Tensor:
    if geo["padding_mode"] != "zeros":  # same rule as nn.ConvNd._conv_forward
        x = F.pad(x, geo["reversed_padding"], mode=geo["padding_mode"])
        return conv_fn(x, weight, None, geo["stride"], 0, geo["dilation"])
    return conv_fn(x, weight, None, geo["stride"], geo["padding"], geo["dilation"])


def _conv_geometry(module: nn.Module) -> dict:
    return {
        "dims": len(module.kernel_size),
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "padding_mode": module.padding_mode,
        "reversed_padding": getattr(module, "_reversed_padding_repeated_twice", None),
    }


def layer_shape(module: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    """(in, out, kernel) from module attributes, never from the weight's device (it may live on CPU)."""
    if isinstance(module, nn.Linear):
        return int(module.in_features), int(module.out_features), ()
    if isinstance(module, _CONVS):
        if module.groups != 1:
            raise TrainingError(f"grouped convolution (groups={module.groups}) cannot carry a LoRA")
        return int(module.in_channels), int(module.out_channels), tuple(int(k) for k in module.kernel_size)
    raise TrainingError(f"cannot put a LoRA on {type(module).__name__}: only Linear and Conv1d/2d/3d")


def new_adapter(module: nn.Module, rank: int, alpha: float, dropout: float, generator: torch.Generator) -> LoraAdapter:
    """Fresh adapter: A ~ kaiming-uniform(a=sqrt(5)) as PEFT/kohya (bound 1/sqrt(fan_in)), B = 0."""
    if rank < 1:
        raise TrainingError(f"LoRA rank must be >= 1, got {rank}")
    fan_in_features, out_features, kernel = layer_shape(module)
    fan_in = fan_in_features * math.prod(kernel)
    bound = 1.0 / math.sqrt(fan_in)
    down = (torch.rand((rank, fan_in_features, *kernel), generator=generator) * 2 - 1) * bound
    up = torch.zeros((out_features, rank, *(1 for _ in kernel)))
    return LoraAdapter(down, up, alpha, dropout, None if not kernel else _conv_geometry(module))


def adapter_from_weights(module: nn.Module, weights: LoraModuleWeights) -> LoraAdapter:
    """Adapter carrying saved weights, checked against the layer's shape."""
    in_features, out_features, kernel = layer_shape(module)
    down, up = weights.down, weights.up
    if tuple(down.shape[1:]) != (in_features, *kernel) or up.shape[0] != out_features:
        raise TrainingError(
            f"LoRA shapes down={tuple(down.shape)} up={tuple(up.shape)} do not fit layer "
            f"(in={in_features}, out={out_features}, kernel={kernel})"
        )
    if kernel and down.dim() == 2 + len(kernel) and up.dim() == 2:
        up = up.reshape(*up.shape, *(1 for _ in kernel))
    return LoraAdapter(down, up, weights.alpha, 0.0, None if not kernel else _conv_geometry(module))
