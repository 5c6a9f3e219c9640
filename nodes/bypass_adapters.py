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

from ..lora_core.data.samples import usable_in_autograd


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


@contextlib.contextmanager
def trainable_bypass_adapters(*patchers) -> Iterator[None]:
    """Inside: every bypass adapter of these patchers holds ordinary tensors. Call outside inference mode.
    The originals are put back on exit unless ComfyUI replaced them meanwhile."""
    swapped = []
    for patcher in patchers:
        for _key, adapter, _strength in bypass_adapters(patcher) if patcher is not None else ():
            if isinstance(adapter, torch.nn.Module) or getattr(adapter, "weights", None) is None:
                continue  # a training adapter's parameters are ordinary already
            copies = usable_in_autograd(adapter.weights)
            swapped.append((adapter, adapter.weights, copies))
            adapter.weights = copies
    try:
        yield
    finally:
        for adapter, original, copies in swapped:
            if adapter.weights is copies:
                adapter.weights = original
