"""Adapters by algorithm name, and the saved form of each (algorithms/ holds one file per algorithm).

    y = layer(x) + multiplier * h(x)     (DoRA also rescales per channel: dora.py; OFT rotates the output: oft.py)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, Fetch, Geometry, ModuleWeights, geometry, is_adaptable
from .dora import AXES as DORA_AXES, DoraAdapter, needs_fetch
from .loha import LohaAdapter
from .lokr import LokrAdapter
from .lora import LoraAdapter, LoraModuleWeights
from .oft import OftAdapter
from ..errors import TrainingError

ALGORITHMS: dict[str, type[Adapter]] = {"lora": LoraAdapter, "loha": LohaAdapter, "lokr": LokrAdapter,
                                         "dora": DoraAdapter, "oft": OftAdapter}
# the options each algorithm takes, with their types (a tuple: the allowed values; float takes ints too)
ALGORITHM_OPTIONS: dict[str, dict[str, Any]] = {"lora": {}, "loha": {}, "lokr": {"factor": int, "decompose_both": bool},
                                                "dora": {"axis": DORA_AXES},
                                                "oft": {"block_size": int, "constraint": float}}

__all__ = ["ALGORITHMS", "ALGORITHM_OPTIONS", "DORA_AXES", "Adapter", "Geometry", "LoraAdapter", "ModuleWeights",
           "adapter_from_weights", "check_algorithm", "is_adaptable", "new_adapter"]


def check_algorithm(algorithm: str, options: dict[str, Any]) -> None:
    """An algorithm this module has, with only the options it takes, each of the right type or value."""
    if algorithm not in ALGORITHMS:
        raise TrainingError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    allowed = ALGORITHM_OPTIONS[algorithm]
    for key, value in options.items():
        if key not in allowed:
            raise TrainingError(f"algorithm {algorithm!r} has no option {key!r}; its options: "
                                f"{', '.join(allowed) or 'none'}")
        kind = allowed[key]
        if isinstance(kind, tuple) and value not in kind:
            raise TrainingError(f"{algorithm} option {key} = {value!r}; choose one of {', '.join(kind)}")
        accepted = (int, float) if kind is float else kind
        if isinstance(kind, type) and (not isinstance(value, accepted)
                                       or (kind in (int, float) and isinstance(value, bool))):
            raise TrainingError(f"{algorithm} option {key} must be {kind.__name__}, got {value!r}")


def new_adapter(module: nn.Module, rank: int, alpha: float, dropout: float, generator: torch.Generator,
                algorithm: str = "lora", fetch: Fetch | None = None, name: str = "", **options: Any) -> Adapter:
    """A fresh adapter of `algorithm` whose side path starts at zero (the layer is unchanged).
    options: LoKr factor / decompose_both, DoRA axis, OFT block_size / constraint; fetch: the backend's weight
    fetch (DoRA needs it; OFT reads the layer's bias through it)."""
    check_algorithm(algorithm, options)
    cls = ALGORITHMS[algorithm]
    geo = geometry(module)
    if cls is DoraAdapter:
        options = {**options, "module": module, "fetch": needs_fetch(fetch)}
    elif cls is OftAdapter:
        options = {**options, "fetch": fetch}
    return cls.create(geo, rank, alpha, dropout, generator, name=name, **options)


def adapter_from_weights(module: nn.Module, weights: ModuleWeights, fetch: Fetch | None = None) -> Adapter:
    """An adapter carrying saved weights, checked against the layer's shape."""
    geo = geometry(module)
    if isinstance(weights, LoraModuleWeights) and weights.dora_scale is not None:
        return DoraAdapter.from_weights(geo, weights, needs_fetch(fetch))
    if weights.kind == OftAdapter.kind:
        return OftAdapter.from_weights(geo, weights, fetch)
    for cls in (LoraAdapter, LohaAdapter, LokrAdapter):
        if weights.kind == cls.kind:
            return cls.from_weights(geo, weights)
    raise TrainingError(f"no adapter for saved weights of kind {weights.kind!r}")


