"""LoRAs that a MODEL carries in bypass mode (August 2026's "Load LoRA (Bypass)"): read them, and train through them.

Bypass mode leaves the weights alone and adds each adapter in forward, from a hook that holds the adapter and its
strength. ComfyUI keeps only the injection's inject/eject closures over its BypassInjectionManager on the patcher,
so the manager is read from the closure. The adapters' tensors were loaded inside the executor's inference mode:
autograd cannot save them for backward, so for a run they are swapped for ordinary copies (the adapters are small;
ComfyUI itself swaps them when it moves them to the compute device) and put back afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def bypass_adapters(patcher) -> list[tuple[str, object, float]]:
    """(weight key, adapter, strength) of every bypass hook in the patcher's injections; [] on older ComfyUI."""
    found = []
    for injections in getattr(patcher, "injections", {}).values():
        for injection in injections:
            for cell in getattr(getattr(injection, "inject", None), "__closure__", None) or ():
                manager = cell.cell_contents
                adapters = getattr(manager, "adapters", None)
                if isinstance(adapters, dict) and hasattr(manager, "hooks"):
                    found += [(key + ".weight", adapter, float(strength))
                              for key, (adapter, strength) in adapters.items()]
    return found


def _ordinary(weights):
    """The same weights with every inference tensor replaced by an ordinary copy (None: nothing to replace)."""
    if isinstance(weights, torch.Tensor):
        return weights.clone() if weights.is_inference() else None
    if isinstance(weights, (list, tuple)) and any(isinstance(w, torch.Tensor) and w.is_inference() for w in weights):
        copies = [w.clone() if isinstance(w, torch.Tensor) and w.is_inference() else w for w in weights]
        return tuple(copies) if isinstance(weights, tuple) else copies
    return None


@contextlib.contextmanager
def trainable_bypass_adapters(*patchers) -> Iterator[int]:
    """Inside: every bypass adapter of these patchers holds ordinary tensors (yields how many were swapped).
    Call outside inference mode. The originals are put back on exit unless ComfyUI replaced them meanwhile."""
    swapped = []
    for patcher in patchers:
        for _key, adapter, _strength in bypass_adapters(patcher) if patcher is not None else ():
            if isinstance(adapter, torch.nn.Module):
                continue  # a training adapter's parameters are ordinary already
            copies = _ordinary(getattr(adapter, "weights", None))
            if copies is not None:
                swapped.append((adapter, adapter.weights, copies))
                adapter.weights = copies
    try:
        yield len(swapped)
    finally:
        for adapter, original, copies in swapped:
            if adapter.weights is copies:
                adapter.weights = original
