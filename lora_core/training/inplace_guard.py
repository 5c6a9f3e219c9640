"""Make blocks that update their input in place (`x += f(norm(x))`) trainable.

ComfyUI's Flux blocks (and other original model code) write the residual stream in place. When the
stream needs grad (any LoRA upstream), the tensor saved for backward by `norm(x)` is then modified and
backward fails ("modified by an inplace operation"); under checkpointing the recomputation would even
see the modified values. The guard snapshots, at save time, every saved tensor that shares storage with
a block input, so backward sees exactly the values the forward used. Cost: one copy per such save.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def _input_storages(args: tuple, kwargs: dict) -> set[int]:
    values = list(args) + list(kwargs.values())
    # inputs that need no grad yet may join the graph through the in-place add itself, so take them all
    return {v.untyped_storage().data_ptr() for v in values if isinstance(v, torch.Tensor)}


def guard_inplace_inputs(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a block forward so tensors saved for backward that alias its inputs are copied when saved."""

    def guarded(*args, **kwargs):
        storages = _input_storages(args, kwargs)
        if not storages or not torch.is_grad_enabled():
            return forward(*args, **kwargs)

        def pack(t: torch.Tensor) -> torch.Tensor:
            return t.clone() if t.untyped_storage().data_ptr() in storages else t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return forward(*args, **kwargs)

    return guarded
