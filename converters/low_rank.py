"""A module's weight delta as a low-rank product, its singular values, and its best rank-k approximation.

For a LoRA, dW = s * B @ A is already a product U @ D of rank r: its SVD comes from two thin QRs and the SVD of an
r x r matrix (never forming the out x in delta). Other adapters (LoHa, LoKr, full deltas) use their full delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .delta import factor_delta
from .module_weights import ModuleWeights, as_matrix, fold_mid


@dataclass
class Factors:
    """dW = up @ down, up (out, r), down (r, in*k*k); down None: `up` is the full delta itself.
    `in_shape` is the layer's input shape (in, *kernel)."""

    up: Tensor
    down: Tensor | None
    in_shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.down.shape[0] if self.down is not None else min(self.up.shape)

    def matrix(self) -> Tensor:
        return self.up if self.down is None else self.up @ self.down


def factors(m: ModuleWeights) -> Factors | None:
    """The module's delta (without DoRA or bias) as exact fp32 factors; None when it has no weight delta."""
    t = m.tensors
    if m.kind == "lora" and "diff" not in t:
        down = t["down"].float() if "mid" not in t else fold_mid(t["down"].float(), t["mid"].float())
        return Factors(m.scale * as_matrix(t["up"].float()), as_matrix(down), tuple(down.shape[1:]))
    d = factor_delta(m)
    if d is None and "diff" not in t:
        return None
    full = (d if d is not None else 0) + (as_matrix(t["diff"].float()) if "diff" in t else 0)
    in_shape = tuple(t["diff"].shape[1:]) if "diff" in t else (full.shape[1],)
    return Factors(full, None, in_shape)


def stack(weighted: list[tuple[float, Factors]]) -> Factors:
    """sum_i w_i dW_i exactly: as one product (B's side by side, weighted; A's stacked) when every term is a
    product, else as the full matrix."""
    first = weighted[0][1]
    if all(f.down is not None and f.in_shape == first.in_shape for _, f in weighted):
        up = torch.cat([w * f.up for w, f in weighted], dim=1)
        return Factors(up, torch.cat([f.down for _, f in weighted], dim=0), first.in_shape)
    return Factors(sum(w * f.matrix() for w, f in weighted), None, first.in_shape)


def svd(f: Factors) -> tuple[Tensor, Tensor, Tensor]:
    """U, S, Vh of the delta (descending S), in float64; for a product, via a thin QR of each factor."""
    if f.down is None:
        return torch.linalg.svd(f.up.double(), full_matrices=False)
    q1, r1 = torch.linalg.qr(f.up.double())
    q2, r2 = torch.linalg.qr(f.down.double().T)
    p, s, qh = torch.linalg.svd(r1 @ r2.T, full_matrices=False)
    return q1 @ p, s, qh @ q2.T


def truncate(u: Tensor, s: Tensor, vh: Tensor, rank: int, in_shape: tuple[int, ...]) -> Factors:
    """Best rank-k approximation (Eckart-Young), split as up = U sqrt(S), down = sqrt(S) Vh."""
    root = s[:rank].sqrt()
    return Factors((u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float(), in_shape)


def relative_error(s: Tensor, rank: int) -> float:
    """||dW - dW_k||_F / ||dW||_F = sqrt(sum of the dropped s^2 / sum of all s^2)."""
    total = float((s ** 2).sum())
    return math.sqrt(float((s[rank:] ** 2).sum()) / total) if total > 0 else 0.0


def as_module(f: Factors, dtype: torch.dtype, diff_b: Tensor | None = None) -> ModuleWeights:
    """A LoRA module (scale 1: alpha = rank) holding the product `f`, or a full-delta module for a matrix."""
    extras = {"diff_b": diff_b.to(dtype)} if diff_b is not None else {}
    if f.down is None:
        return ModuleWeights("diff", {"diff": f.up.reshape(f.up.shape[0], *f.in_shape).to(dtype), **extras})
    kernel = f.in_shape[1:]
    down = f.down.reshape(f.rank, *f.in_shape).to(dtype)
    up = f.up.reshape(f.up.shape[0], f.rank, *[1] * len(kernel)).to(dtype)
    return ModuleWeights("lora", {"down": down, "up": up, **extras}, alpha=float(f.rank))
