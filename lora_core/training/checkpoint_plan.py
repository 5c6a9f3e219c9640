"""Which units `partial` checkpointing recomputes: those that keep the most activation memory per unit of
recompute cost, until what stays kept is at most `budget` of what checkpointing off keeps.

Every unit i is measured once per run, before the first step, on one fixed batch (checkpoint_units' units,
one forward, eager):
    kept_i   bytes autograd keeps for backward inside the unit (distinct storages packed by saved-tensor
             hooks, in-place-guard copies included; not weights, resident anyway, nor the unit's inputs, kept
             in every mode)
    cost_i   what recomputing it costs, by the roofline:  FLOPs_i / BALANCE + weight bytes_i
             (FLOPs of the products, convolutions and attention from torch's FlopCounterMode; BALANCE is the
             FLOPs a device does in the time it reads one byte, so small products that only stream their
             weight, as at 64 px, cost what the weight read costs)
Recomputing unit i saves kept_i for cost_i; the units are taken by kept_i / cost_i, largest first (the
fractional knapsack's order), until the rest keep at most budget * sum(kept_i).

No timings: the plan is a function of the model, the settings and the batch, so a resumed run makes the same
plan and stays byte-identical. Measured on the CPU, SD1.5 at 64 px: the high-resolution attention blocks keep
~2.5 MB each for ~30-100 ms of forward, the 1280-channel blocks 0.03-0.2 MB for 50-500 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.flop_counter import FlopCounterMode

from .forward_patches import replace_forward, restore_forwards

# FLOPs per byte of memory read at which a device's arithmetic and memory take the same time (its roofline
# ridge): a few for a CPU's vector units against its DRAM, ~100 for a GPU's tensor cores against HBM.
BALANCE = {"cpu": 10.0}
DEFAULT_BALANCE = 100.0


@dataclass
class UnitCost:
    kept: int = 0  # bytes kept for backward inside the unit when it is not recomputed
    flops: int = 0
    weight_bytes: int = 0
    calls: int = 0

    def cost(self, balance: float) -> float:
        return self.flops / balance + self.weight_bytes * self.calls


def _grad_copies(args: tuple, kwargs: dict) -> tuple[tuple, dict, set[int]]:
    """Copies of the call's floating tensors that need grad, as a unit inside the network gets them (non-leaf,
    so blocks that add to their input in place may), and the storages of every input."""
    leaves, spec = tree_flatten((args, kwargs))
    inputs = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)}
    copies = [t.detach().requires_grad_().clone() if isinstance(t, torch.Tensor) and t.is_floating_point()
              else (t.clone() if isinstance(t, torch.Tensor) else t) for t in leaves]
    new_args, new_kwargs = tree_unflatten(copies, spec)
    inputs |= {t.untyped_storage().data_ptr() for t in copies if isinstance(t, torch.Tensor)}
    return new_args, new_kwargs, inputs


def _kept_bytes(forward: Callable[..., Any], args: tuple, kwargs: dict, guard_inplace: bool) -> int:
    """Bytes the unit keeps for backward when run with grad (the in-place guard's copies count: they are kept)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        base = t if t._base is None else t._base
        if isinstance(base, nn.Parameter) or (base.is_leaf and base.requires_grad):
            return t  # weights (the model's, the LoRA's; or views of them) are resident anyway
        if ptr in inputs:
            if not guard_inplace:
                return t
            t = t.clone()  # what the guard keeps instead
            ptr = t.untyped_storage().data_ptr()
        storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.enable_grad():
        args, kwargs, inputs = _grad_copies(args, kwargs)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward(*args, **kwargs)
    del out
    return sum(storages.values())


def _probe(unit: nn.Module, forward: Callable[..., Any], record: UnitCost, guard_inplace: bool) -> Callable[..., Any]:
    weight_bytes = sum(p.numel() * p.element_size() for p in unit.parameters())

    def probed(*args, **kwargs):
        record.kept += _kept_bytes(forward, args, kwargs, guard_inplace)  # first: the real call may write its input
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = forward(*args, **kwargs)
        record.flops += counter.get_total_flops()
        record.weight_bytes, record.calls = weight_bytes, record.calls + 1
        return out

    return probed


def measure_units(units: list[nn.Module], forward_pass: Callable[[], Any], guard_inplace: bool) -> list[UnitCost]:
    """Run forward_pass (one forward of the model, no grad) with every unit measured: see the module docstring.
    Peak memory: one unit's activations at a time, as when it is recomputed."""
    records = [UnitCost() for _ in units]
    saved: list[tuple[nn.Module, object]] = []
    try:
        for unit, record in zip(units, records):
            replace_forward(unit, _probe(unit, unit.forward, record, guard_inplace), saved)
        with torch.no_grad():
            forward_pass()
    finally:
        restore_forwards(saved)
    return records


def choose(records: list[UnitCost], budget: float, device_type: str) -> list[bool]:
    """Which units to recompute so that the others keep at most budget of all kept bytes, cheapest per byte first."""
    balance = BALANCE.get(device_type, DEFAULT_BALANCE)
    total = sum(r.kept for r in records)
    order = sorted(range(len(records)), key=lambda i: (-records[i].kept / max(records[i].cost(balance), 1.0), i))
    recompute = [False] * len(records)
    still_kept = total
    for i in order:
        if still_kept <= budget * total or records[i].kept == 0:
            break
        recompute[i] = True
        still_kept -= records[i].kept
    return recompute


def kept_share(records: list[UnitCost], recompute: list[bool]) -> float:
    """The share of off's kept bytes the plan keeps."""
    total = sum(r.kept for r in records)
    return sum(r.kept for r, again in zip(records, recompute) if not again) / total if total else 0.0

