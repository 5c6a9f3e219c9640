"""OFT: rotate the layer's output channels, block by block, by a trained orthogonal matrix.

Each block of n output channels gets R = (I + Q)(I - Q)^-1 (the Cayley transform), Q = B - B^T skew-symmetric
from the trained block B, so R is orthogonal and B = 0 is the identity. With the constraint c > 0 the whole Q
(all blocks together) is scaled down to Frobenius norm c when it is larger. The merged weight, as ComfyUI's
loader builds it from the saved `oft_blocks` (comfy/weight_adapter/oft.py, the same in its January and
August 2026 snapshots), rotates the rows of W, block k:

    W'_k = R_k^T W_k                    W_k: the n rows (output channels) of block k, kernel included

At strength t that loader adds t * (t R - t I)^T W, i.e. W + t^2 (W' - W): the strength enters squared (so
-1 acts like 1), and this adapter follows it so the in-graph model equals the file at every strength. The
bias is not rotated. In bypass form, with y = base(x) and b the bias:

    y' = y + t^2 (R^T - I) (y - b)      per block of output channels (dim 1 of a conv's output)

Saved as `oft_blocks` (blocks, n, n) and `alpha` = the constraint (0: none). No `rescale`: ComfyUI's weight
loader reads that key but does not apply it. LyCORIS reads alpha as constraint / out_features, so a file
whose Q exceeds the constraint loads differently there. Input dropout has no place on a rotation: OFT takes
dropout 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..errors import TrainingError
from .base import Adapter, Fetch, Geometry, ModuleWeights, cpu_copy
from .lokr import factorization

_NORM_EPS = 1e-8  # what ComfyUI and LyCORIS add to ||Q|| before comparing it with the constraint


def cayley(blocks: torch.Tensor, constraint: float = 0.0) -> torch.Tensor:
    """R = (I + Q)(I - Q)^-1 per block, Q = B - B^T, with ||Q|| capped at `constraint` (> 0) over all blocks."""
    q = blocks - blocks.transpose(1, 2)
    if constraint > 0:  # min(1, c / ||Q||) without a host sync: equal to ComfyUI's `if ||Q|| > c: Q c / ||Q||`
        q = q * (constraint / (torch.linalg.vector_norm(q) + _NORM_EPS)).clamp(max=1.0)
    eye = torch.eye(blocks.shape[-1], device=blocks.device, dtype=torch.float32)
    q = q.float()
    return (eye + q) @ torch.linalg.inv(eye - q)


def rotate_channels(y: torch.Tensor, r: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """y with each block k of its channels (dim channel_dim) replaced by r_k^T y_k."""
    y = y.movedim(channel_dim, -1)
    blocks, n = r.shape[0], r.shape[1]
    out = torch.einsum("knm,...kn->...km", r, y.reshape(*y.shape[:-1], blocks, n))
    return out.reshape(y.shape).movedim(-1, channel_dim)


def rotated_weight(weight: torch.Tensor, blocks: torch.Tensor, constraint: float,
                   strength: float = 1.0) -> torch.Tensor:
    """The weight ComfyUI's loader builds: W + t^2 (R^T - I) W over the output rows, in fp32."""
    r = cayley(blocks.float(), constraint)
    w = weight.float()
    return w + strength ** 2 * (rotate_channels(w, r, 0) - w)


@dataclass
class OftWeights(ModuleWeights):
    """tensors: oft_blocks (blocks, n, n); alpha: the constraint on ||Q|| (0 = none)."""

    blocks: torch.Tensor
    alpha: float = 0.0
    weight_shape: tuple[int, ...] = field(default_factory=tuple)
    kind: ClassVar[str] = "oft"

    @property
    def scale(self) -> float:
        return 1.0

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"oft_blocks": self.blocks}

    def rotation(self) -> torch.Tensor:
        return cayley(self.blocks.float(), self.alpha)

    def delta(self) -> torch.Tensor:
        raise TrainingError("OFT's update rotates the base weight: use delta_for(weight)")

    def delta_for(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """W' - W for this layer's weight, as ComfyUI's loader applies it at `strength`."""
        return rotated_weight(weight, self.blocks, self.alpha, strength) - weight.float()


class OftAdapter(Adapter):
    kind = "oft"

    def __init__(self, geo: Geometry, blocks: torch.Tensor, constraint: float, fetch: Fetch | None = None):
        super().__init__(geo, constraint, 0.0)
        if constraint < 0:
            raise TrainingError(f"OFT constraint must be >= 0 (0 = none), got {constraint}")
        square = blocks.dim() == 3 and blocks.shape[1] == blocks.shape[2]
        if not square or blocks.shape[0] * blocks.shape[1] != geo.out_features:
            raise TrainingError(f"OFT blocks of shape {tuple(blocks.shape)} do not fit a layer with "
                                f"{geo.out_features} outputs (need (blocks, n, n), blocks x n = outputs)")
        self.blocks = nn.Parameter(blocks.detach().float().clone())
        self.fetch = fetch

    @property
    def scale(self) -> float:
        return 1.0

    def bias(self, module: nn.Module, like: torch.Tensor) -> torch.Tensor | None:
        """The layer's bias as its forward used it (the backend's fetch: casts, patches); constant."""
        if getattr(module, "bias", None) is None:
            return None
        if self.fetch is None:
            return module.bias.detach().to(like)
        with torch.no_grad():
            _, bias, release = self.fetch(module, like)
            try:
                return None if bias is None else bias.detach().to(like).clone()
            finally:
                release()

    def bypass(self, module: nn.Module, x: torch.Tensor, base_out: torch.Tensor, multiplier: float) -> torch.Tensor:
        if multiplier == 0:
            return base_out
        channel_dim = -1 if self.geometry.conv is None else 1
        bias = self.bias(module, base_out)
        plain = base_out
        if bias is not None:
            shape = [1] * base_out.dim()
            shape[channel_dim] = -1
            plain = base_out - bias.reshape(shape)
        eye = torch.eye(self.blocks.shape[1], device=self.blocks.device)
        change = self.cast(cayley(self.blocks, self.alpha) - eye, base_out)
        return base_out + multiplier ** 2 * rotate_channels(plain, change, channel_dim)

    def h(self, x: torch.Tensor) -> torch.Tensor:
        raise TrainingError("OFT has no additive side path: it rotates the layer's output (bypass)")

    def weights(self) -> OftWeights:
        return OftWeights(cpu_copy(self.blocks), self.alpha, self.geometry.weight_shape)

    @classmethod
    def create(cls, geo: Geometry, rank: int, alpha: float, dropout: float, generator: torch.Generator,
               block_size: int = 0, constraint: float = 0.0, fetch: Fetch | None = None, name: str = "",
               **_) -> "OftAdapter":
        """Zero blocks (R = I: the layer starts unchanged). n = the largest divisor of the layer's outputs up to
        min(block_size or rank, sqrt(outputs)), as LyCORIS and ComfyUI's trainer choose it. alpha is unused."""
        if dropout > 0:
            raise TrainingError(f"OFT rotates the layer's output and takes no input dropout (got {dropout}); "
                                "set it to 0")
        if block_size < 0:
            raise TrainingError(f"OFT block_size must be >= 0 (0 = the rank), got {block_size}")
        n, k = factorization(geo.out_features, block_size or rank)
        return cls(geo, torch.zeros(k, n, n), float(constraint), fetch)

    @classmethod
    def from_weights(cls, geo: Geometry, weights: OftWeights, fetch: Fetch | None = None) -> "OftAdapter":
        return cls(geo, weights.blocks, float(weights.alpha), fetch)
