"""Attach adapters to named modules with forward hooks, and take them off again.

Hooks leave the model's parameters, state_dict and module tree untouched (the model is shared with the
rest of the graph); detaching restores it exactly. `multiplier` is the LoRA strength. Adapters that
rescale the layer's input (DoRA on the input axis) also get a forward pre-hook at strength 1.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .base import Adapter
from ..errors import TrainingError


class AttachedLora:
    """Live attachment: `multiplier` can be changed between forwards; call detach() (idempotent).
    roots: the module trees adapter names live in; "te1:path" names use roots["te1"], plain names roots[""]."""

    def __init__(self, root: nn.Module | dict[str, nn.Module], adapters: dict[str, Adapter], multiplier: float = 1.0):
        self.adapters = adapters
        self.multiplier = float(multiplier)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        roots = root if isinstance(root, dict) else {"": root}
        modules = {(f"{prefix}:{n}" if prefix else n): m for prefix, r in roots.items() for n, m in r.named_modules()}
        try:
            for name, adapter in adapters.items():
                if name not in modules:
                    raise TrainingError(f"LoRA target {name!r} is not a module of {type(roots.get('', next(iter(roots.values())))).__name__}")
                module = modules[name]
                if getattr(adapter, "axis", None) == "input":
                    self._handles.append(module.register_forward_pre_hook(self._pre_hook(adapter), with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._hook(adapter), with_kwargs=True))
        except BaseException:
            self.detach()
            raise

    def _pre_hook(self, adapter: Adapter):
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict):
            if self.multiplier != 1.0 or not args:
                return None
            return (adapter.scaled_input(module, args[0]), *args[1:]), kwargs

        return pre_hook

    def _hook(self, adapter: Adapter):
        pre_scaled = getattr(adapter, "axis", None) == "input"

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
            if self.multiplier == 0.0:
                return output
            x = args[0] if args else kwargs["input"]
            if pre_scaled:
                return adapter.bypass(module, x, output, self.multiplier, pre_scaled=self.multiplier == 1.0 and bool(args))
            return adapter.bypass(module, x, output, self.multiplier)

        return hook

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def attached(root: nn.Module | dict[str, nn.Module], adapters: dict[str, Adapter], multiplier: float = 1.0) -> Iterator[AttachedLora]:
    """`with attached(model, adapters): ...` -- adapters are always removed on exit."""
    attachment = AttachedLora(root, adapters, multiplier)
    try:
        yield attachment
    finally:
        attachment.detach()
