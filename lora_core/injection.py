"""Attach LoRA adapters to named modules with forward hooks, and take them off again.

Hooks leave the model's parameters, state_dict and module tree untouched (the model is shared with the
rest of the graph); detaching restores it exactly. `multiplier` is the LoRA strength.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .adapters import LoraAdapter
from .errors import TrainingError


class AttachedLora:
    """Live attachment: `multiplier` can be changed between forwards; call detach() (idempotent)."""

    def __init__(self, root: nn.Module, adapters: dict[str, LoraAdapter], multiplier: float = 1.0):
        self.adapters = adapters
        self.multiplier = float(multiplier)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        modules = dict(root.named_modules())
        try:
            for name, adapter in adapters.items():
                if name not in modules:
                    raise TrainingError(f"LoRA target {name!r} is not a module of {type(root).__name__}")
                self._handles.append(modules[name].register_forward_hook(self._hook(adapter), with_kwargs=True))
        except BaseException:
            self.detach()
            raise

    def _hook(self, adapter: LoraAdapter):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
            if self.multiplier == 0.0:
                return output
            x = args[0] if args else kwargs["input"]
            return output + (self.multiplier * adapter(x)).to(output.dtype)

        return hook

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def attached(root: nn.Module, adapters: dict[str, LoraAdapter], multiplier: float = 1.0) -> Iterator[AttachedLora]:
    """`with attached(model, adapters): ...` -- adapters are always removed on exit."""
    attachment = AttachedLora(root, adapters, multiplier)
    try:
        yield attachment
    finally:
        attachment.detach()
