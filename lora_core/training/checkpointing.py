"""Gradient checkpointing that really recomputes, on the units each architecture's forward really calls.

Units are the elements of the outermost nn.ModuleLists (the transformer / UNet blocks) and of root-level
nn.Sequential containers. A unit that is itself an nn.Sequential is replaced by its children: ComfyUI's
UNet runs a TimestepEmbedSequential's layers one by one (forward_timestep_embed) and never calls the
container's own forward, so a wrapper there would never run.

Each checkpointed unit (all of them in `full`; those checkpoint_plan.py picks in `partial`) runs through
reentrant torch.utils.checkpoint: the forward keeps nothing inside the unit, only
its inputs, and backward re-runs the unit with grad and back-propagates through it. Reentrant, not the
saved-tensor-hooks variant, because in-place blocks need their own saved-tensor hook (inplace_guard.py)
during the recomputation, and saved-tensor hooks do not nest (the innermost wins, which silently turned
checkpointing off). With the guard on, the unit works on clones of its inputs, so a block that writes its
input in place (ComfyUI's Flux: `x += ...`) cannot corrupt the copy kept for recomputation.

`partial` chooses units, not operations. torch's selective activation checkpointing (keep the outputs of
chosen ops, recompute the rest: create_selective_checkpoint_contexts) was weighed and not used: it exists only
for the non-reentrant checkpoint, whose saved-tensor hooks the guard's would override (above); its replay matches
ops by position and fails on any op the first pass did not run, which the no-grad first pass here does not
promise; and what it can save is small where it matters: on ComfyUI's SD1.5 at 64 px, the outputs of the
products and convolutions inside the units are 24.5 MB of the 32.5 MB that off keeps (keeping them keeps 75%),
because the memory sits in those outputs (cross-attention K/V over the 77 text tokens, GEGLU), not in the
norms and activations around them. A unit's recompute cost and kept bytes differ by 10-100x between SD's
high- and low-resolution blocks, and that is what the plan uses.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint

from .forward_patches import replace_forward, restore_forwards
from .inplace_guard import guard_inplace_inputs

def _expand(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [unit for child in module for unit in _expand(child)]
    return [module] if any(True for _ in module.parameters()) else []  # parameter-free units are cheap to keep


def checkpoint_units(root: nn.Module) -> list[nn.Module]:
    """The modules whose forwards are wrapped: see the module docstring."""
    units: list[nn.Module] = []
    inside: set[int] = set()
    top_level = {id(m) for m in root.children() if isinstance(m, nn.Sequential)}
    candidates: list[nn.Module] = []
    for module in root.modules():  # pre-order: outer containers come first, in the model's own order
        if id(module) in inside:
            continue
        if isinstance(module, nn.ModuleList):
            candidates.extend(module)
        elif id(module) in top_level:
            candidates.append(module)
        else:
            continue
        inside.update(id(m) for m in module.modules())
    for candidate in candidates:
        for unit in _expand(candidate):
            if id(unit) not in {id(u) for u in units}:
                units.append(unit)
    return units


def _split(args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], tuple[tuple, dict]]]:
    """Every tensor of a call, nested ones included, and how to rebuild the call from new values.

    Reentrant checkpointing passes gradients only to the tensors given to it; a tensor left in the closure
    (UNet up blocks get their skip connections as a tuple) would let the recomputation's backward run into
    the outer graph and reach other checkpointed units twice.
    """
    leaves, spec = tree_flatten((args, kwargs))
    # (leaf index, dataclass field or None): dataclasses are pytree leaves, but blocks get tensors in them
    # (Chroma's and Flux 2's ModulationOut), which need grad once the modulation layers carry a LoRA
    where = [(i, None) for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    where += [(i, f.name) for i, leaf in enumerate(leaves) if dataclasses.is_dataclass(leaf) and not isinstance(leaf, type)
              for f in dataclasses.fields(leaf) if isinstance(getattr(leaf, f.name, None), torch.Tensor)]

    def rebuild(values: list[torch.Tensor]) -> tuple[tuple, dict]:
        new = list(leaves)
        for (i, field), value in zip(where, values):
            if field is None:
                new[i] = value
                continue
            if new[i] is leaves[i]:
                new[i] = copy.copy(leaves[i])  # the caller's instance is left as it was
            object.__setattr__(new[i], field, value)  # frozen dataclasses too
        return tree_unflatten(new, spec)

    return [leaves[i] if field is None else getattr(leaves[i], field) for i, field in where], rebuild


def _checkpointed(forward: Callable[..., Any], clone_inputs: bool, learns: bool) -> Callable[..., Any]:
    """learns: the unit holds trainable parameters (or adapted layers), so it must join the graph even when
    no input needs grad; a unit that does not learn and gets no grad-needing input keeps nothing at all."""
    def wrapped(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        tensors, rebuild = _split(args, kwargs)
        if not learns and not any(t.requires_grad for t in tensors):
            with torch.no_grad():
                return forward(*args, **kwargs)
        output: dict[str, Any] = {}

        def body(_anchor, *values):
            if clone_inputs:
                values = [v.clone() for v in values]
            new_args, new_kwargs = rebuild(list(values))
            # Only top-level tensor outputs of an autograd Function carry gradients: flatten nested ones
            # (diffusers' down blocks return (hidden, (skip, skip, ...))).
            leaves, output["spec"] = tree_flatten(forward(*new_args, **new_kwargs))
            output["leaves"] = leaves
            return tuple(leaf for leaf in leaves if isinstance(leaf, torch.Tensor))

        # The anchor needs grad so that backward reaches a learning unit even when no input does (the first
        # block before any LoRA): its adapters' parameters still need their gradients.
        anchor = torch.zeros((), device=tensors[0].device if tensors else None, requires_grad=learns)
        flat = iter(checkpoint(body, anchor, *tensors, use_reentrant=True, preserve_rng_state=True))
        leaves = [next(flat) if isinstance(leaf, torch.Tensor) else leaf for leaf in output["leaves"]]
        return tree_unflatten(leaves, output["spec"])

    return wrapped


@contextmanager
def gradient_checkpointing(root: nn.Module, enabled: bool = True, guard_inplace: bool = False,
                           adapted: Iterable[nn.Module] = (), recompute: list[bool] | None = None) -> Iterator[int]:
    """Wrap the units' forwards for the duration (checkpointing and/or the in-place input guard); yields the
    number of units wrapped. adapted: layers carrying trainable side paths (hooks, not submodules); recompute:
    per unit of checkpoint_units(root), whether it is checkpointed (None: all, as `full`; the others are only
    guarded). Original forwards are restored in finally."""
    adapted_ids = {id(m) for m in adapted}
    if not (enabled or guard_inplace):
        yield 0
        return
    saved: list[tuple[nn.Module, object]] = []
    try:
        units = checkpoint_units(root)
        for unit, again in zip(units, recompute if recompute is not None else [True] * len(units)):
            forward = guard_inplace_inputs(unit.forward) if guard_inplace else unit.forward
            learns = any(p.requires_grad for p in unit.parameters()) or any(id(m) in adapted_ids for m in unit.modules())
            replace_forward(unit, _checkpointed(forward, guard_inplace, learns) if enabled and again else forward, saved)
        yield len(saved)
    finally:
        restore_forwards(saved)
