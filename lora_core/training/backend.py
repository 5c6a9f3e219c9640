"""What the training loop needs from a model. Implemented for diffusers (diffusers_backend.py) and for
ComfyUI's ModelPatcher (nodes/comfy_backend.py)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Backend(Protocol):
    root: torch.nn.Module  # where LoRA target modules are searched and attached
    prediction: str  # "eps" | "v" | "flow" (informational / metadata)
    device: torch.device

    def sigma_from_u(self, u: torch.Tensor) -> torch.Tensor:
        """u in [0, 1] (0 clean .. 1 pure noise) -> the model's sigma, shift included."""
        ...

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_t as the model sees it (before its own input scaling)."""
        ...

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        """D(x_t): the x0 prediction, differentiable; conds[i] pairs with x_t[i]."""
        ...

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        """Coefficient of the raw network output in D."""
        ...
