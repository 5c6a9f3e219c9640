"""DoRA: LoRA whose merged weight W' = W + s B A is renormalised to a trained magnitude m,

    output axis (PEFT, the DoRA paper):  W'_o   <- m_o * W'_o   / ||W'_o||     (per output row o)
    input axis  (LyCORIS, A1111):        W'_:i  <- m_i * W'_:i  / ||W'_:i||    (per input column i)

with the norm treated as a constant (no gradient), as the paper and PEFT do. The norm is computed from
the base weight W (backend.fetch_weight: ComfyUI casts and patches it) and the factors, never from a
materialised Delta W:

    ||W_o + s (BA)_o||^2 = ||W_o||^2 + 2 s sum_k B_ok (W A^T)_ok + s^2 sum_k (B G)_ok B_ok,   G = A A^T
    ||W_:i + s (BA)_:i||^2 = ||W_:i||^2 + 2 s sum_k (B^T W)_ki A_ki + s^2 sum_k (H A)_ki A_ki,  H = B^T B
(for convs A's kernel positions join the sums). In bypass form, with c = m / ||W'||:
    output axis:  y = base(x) + t [ (c - 1) (base(x) - bias) + c s B A x ]
    input axis:   y = base(c x) + s B A (c x)        (t = 1; other strengths t blend as W + t (W' - W))

Saved as kohya LoRA keys plus dora_scale = m, shaped (1, in, 1..) on the input axis or (out, 1, ..) on
the output axis, as ComfyUI's loader reads it. ComfyUI (up to at least its August 2026 snapshot) divides
the output axis by ||W|| instead of ||W'|| (open PR Comfy-Org/ComfyUI#15458), so only the input axis is
applied exactly there; it is the default. The output axis converts to PEFT's lora_magnitude_vector.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import TrainingError
from .base import Fetch, Geometry
from .lora import LoraAdapter, LoraModuleWeights

AXES = ("input", "output")


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)  # what ComfyUI adds to the norm


def row_norms(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, scale: float) -> torch.Tensor:
    """||(W + s B A)_o|| for each output row o, without building B A. weight (out, in, *k)."""
    w = weight.reshape(weight.shape[0], -1).float()
    b = up.reshape(up.shape[0], -1).float()
    a = down.reshape(down.shape[0], -1).float()
    squared = w.pow(2).sum(1) + 2 * scale * (b * (w @ a.T)).sum(1) + scale**2 * ((b @ (a @ a.T)) * b).sum(1)
    return squared.clamp(min=0).sqrt()


def column_norms(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, scale: float) -> torch.Tensor:
    """||(W + s B A)_{:, i, :}|| for each input channel i (over outputs and kernel positions)."""
    out, inp = weight.shape[0], weight.shape[1]
    w = weight.reshape(out, inp, -1).float()  # (o, i, k)
    b = up.reshape(up.shape[0], -1).float()  # (o, r)
    a = down.reshape(down.shape[0], inp, -1).float()  # (r, i, k)
    bw = torch.einsum("or,oik->rik", b, w)
    ha = torch.einsum("rs,sik->rik", b.T @ b, a)
    squared = w.pow(2).sum((0, 2)) + 2 * scale * (bw * a).sum((0, 2)) + scale**2 * (ha * a).sum((0, 2))
    return squared.clamp(min=0).sqrt()


def dora_weight(merged: torch.Tensor, magnitude: torch.Tensor | None, input_scale: torch.Tensor | None) -> torch.Tensor:
    """DoRA's W' = m * (W + dW) / ||W + dW|| on the (out, in*k*k) matrix `merged` = W + dW.

    magnitude (out,): norms per output row (PEFT, LyCORIS wd_on_out). input_scale (1, in, ...): norms per input
    channel over all rows and kernel taps (OneTrainer and LyCORIS input-axis decomposition)."""
    if magnitude is not None:
        return magnitude.reshape(-1, 1) * merged / merged.norm(dim=1, keepdim=True)
    n_in = input_scale.shape[1]
    cols = merged.reshape(merged.shape[0], n_in, -1)
    norm = cols.transpose(0, 1).reshape(n_in, -1).norm(dim=1)
    return (cols * (input_scale.reshape(-1) / norm)[None, :, None]).reshape(merged.shape)


def _channel_shape(x: torch.Tensor, geo: Geometry, n: int) -> tuple[int, ...]:
    """Broadcast shape of a per-channel vector against x: last dim for Linear, dim 1 for convs."""
    return (n,) if geo.conv is None else (1, n) + (1,) * (x.dim() - 2)


class DoraAdapter(LoraAdapter):
    kind = "dora"

    def __init__(self, geo: Geometry, down: torch.Tensor, up: torch.Tensor, alpha: float, magnitude: torch.Tensor,
                 axis: str, fetch: Fetch, dropout: float = 0.0):
        super().__init__(geo, down, up, alpha, dropout)
        if axis not in AXES:
            raise TrainingError(f"unknown DoRA axis {axis!r}: use 'input' or 'output'")
        self.axis = axis
        self.magnitude = nn.Parameter(magnitude.detach().float().reshape(-1).clone())
        self.fetch = fetch

    def norms(self, module: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(||W'|| per channel + eps, bias) from the base weight; constant (no gradient)."""
        with torch.no_grad():
            weight, bias, release = self.fetch(module, like)
            try:
                norm_fn = column_norms if self.axis == "input" else row_norms
                norms = norm_fn(weight, self.up, self.down, self.scale) + _eps(weight.dtype)
                bias = None if bias is None else bias.detach().clone()
            finally:
                release()
        return norms, bias

    def factor(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """c = m / ||W'|| per channel, differentiable in m."""
        norms, _ = self.norms(module, x)
        return self.magnitude.to(x.device) / norms.to(x.device)

    # input axis: a forward pre-hook scales the layer's input; the forward hook adds the low-rank part
    def scaled_input(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        c = self.factor(module, x)
        return x * c.reshape(_channel_shape(x, self.geometry, c.shape[0])).to(x.dtype)

    def bypass(self, module: nn.Module, x: torch.Tensor, base_out: torch.Tensor, multiplier: float,
               pre_scaled: bool = False) -> torch.Tensor:
        if self.axis == "input":
            if pre_scaled:  # x is already c * x and base_out = base(c * x): W' x = W (c x) + s B A (c x)
                return base_out + self.h(x).to(base_out.dtype)
            xs = self.scaled_input(module, x)
            merged = module.forward(xs) + self.h(xs).to(base_out.dtype)  # module.forward: no hooks again
            return base_out + multiplier * (merged - base_out)
        norms, bias = self.norms(module, x)
        c = (self.magnitude.to(x.device) / norms.to(x.device))
        c = c.reshape(_channel_shape(base_out, self.geometry, c.shape[0])).to(base_out.dtype)
        plain = base_out if bias is None else base_out - bias.reshape(_channel_shape(base_out, self.geometry, bias.shape[0])).to(base_out)
        change = (c - 1) * plain + c * self.h(x).to(base_out.dtype)
        return base_out + multiplier * change

    def weights(self) -> LoraModuleWeights:
        w = super().weights()
        k = len(self.geometry.kernel)
        shape = (1, -1) + (1,) * k if self.axis == "input" else (-1, 1) + (1,) * k
        w.dora_scale = self.magnitude.detach().cpu().clone().reshape(shape)
        return w

    @classmethod
    def create(cls, geo: Geometry, rank: int, alpha: float, dropout: float, generator: torch.Generator,
               module: nn.Module | None = None, fetch: Fetch | None = None, axis: str = "input", **_) -> "DoraAdapter":
        """LoRA's init, and m = ||W|| per channel (+ ComfyUI's eps), so the layer starts unchanged."""
        lora = LoraAdapter.create(geo, rank, alpha, dropout, generator)
        adapter = cls(geo, lora.down, lora.up, alpha, torch.zeros(geo.in_features if axis == "input" else geo.out_features),
                      axis, fetch, dropout)
        weight = getattr(module, "weight", None)
        norms, _ = adapter.norms(module, torch.empty(0, device=weight.device if weight is not None else "cpu"))
        with torch.no_grad():
            adapter.magnitude.copy_(norms.cpu())
        return adapter

    @classmethod
    def from_weights(cls, geo: Geometry, weights: LoraModuleWeights, fetch: Fetch | None = None) -> "DoraAdapter":
        lora = LoraAdapter.from_weights(geo, weights)
        scale = weights.dora_scale
        axis = "output" if scale.shape[0] == geo.out_features and scale.reshape(-1).shape[0] == geo.out_features \
            and (scale.dim() == 1 or scale.shape[1] == 1) else "input"
        if scale.reshape(-1).shape[0] != (geo.in_features if axis == "input" else geo.out_features):
            raise TrainingError(f"dora_scale of shape {tuple(scale.shape)} fits neither axis of layer "
                                f"(out={geo.out_features}, in={geo.in_features})")
        return cls(geo, lora.down, lora.up, weights.alpha, scale, axis, fetch)


def needs_fetch(fetch: Callable | None) -> Fetch:
    if fetch is None:
        raise TrainingError("DoRA needs the base weight: pass the backend's fetch_weight")
    return fetch
