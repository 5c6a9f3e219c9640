"""Generic gradient checkpointing: recompute each block's activations in backward instead of storing them.

Works on any model (diffusers or ComfyUI) by wrapping the forward of every element of the outermost
nn.ModuleLists (the transformer/UNet blocks). Non-reentrant checkpointing handles kwargs, tuple outputs and
parameters that need grad inside the block (our LoRA adapters) while block inputs need none.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .inplace_guard import guard_inplace_inputs

_MISSING = object()


def block_modules(root: nn.Module) -> list[nn.Module]:
    """Elements of nn.ModuleLists that are not nested inside another chosen element."""
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in root.modules():  # pre-order: outer lists come first
        if isinstance(module, nn.ModuleList) and id(module) not in inside:
            for block in module:
                blocks.append(block)
                inside.update(id(m) for m in block.modules())
    return blocks


def _checkpointed(forward):
    def wrapped(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return wrapped


@contextmanager
def gradient_checkpointing(root: nn.Module, enabled: bool = True, guard_inplace: bool = False) -> Iterator[int]:
    """Wrap block forwards for the duration (checkpointing and/or the in-place input guard, see
    inplace_guard.py); yields the number of blocks wrapped. Original forwards are restored in finally."""
    if not (enabled or guard_inplace):
        yield 0
        return
    saved: list[tuple[nn.Module, object]] = []
    try:
        for block in block_modules(root):
            saved.append((block, block.__dict__.get("forward", _MISSING)))
            forward = guard_inplace_inputs(block.forward) if guard_inplace else block.forward
            block.forward = _checkpointed(forward) if enabled else forward  # checkpoint outside the guard
        yield len(saved)
    finally:
        for block, original in reversed(saved):
            if original is _MISSING:
                del block.forward
            else:
                block.forward = original
