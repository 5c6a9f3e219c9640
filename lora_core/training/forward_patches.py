"""Replacing a module's forward for the length of a run (checkpointing, frozen-base layers) and putting back
exactly what was there: an instance forward of its own, or none (the class's)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

_NONE = object()


def replace_forward(module: nn.Module, forward: Callable[..., Any], saved: list[tuple[nn.Module, object]]) -> None:
    """module.forward = forward, remembering in `saved` what restore_forwards puts back."""
    saved.append((module, module.__dict__.get("forward", _NONE)))
    module.forward = forward


def restore_forwards(saved: list[tuple[nn.Module, object]]) -> None:
    """Undo replace_forward, last first."""
    for module, previous in reversed(saved):
        if previous is _NONE:
            module.__dict__.pop("forward", None)
        else:
            module.forward = previous
