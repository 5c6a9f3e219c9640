"""Nested dicts / lists / tuples of tensors and plain values <-> (flat tensor dict, JSON-able structure).

The one serialiser of every file that keeps such a tree in safetensors: the encoding cache (a ComfyUI
CONDITIONING [[tensor, {"pooled_output": tensor, ...}]], a latent) and the training state (optimizer,
scheduler, grad-scaler and RNG states). Each tensor goes into the flat dict under its path in the tree
("optimizer/state/0/exp_avg"); the structure marks dicts, lists, tuples, int keys and tensors, and keeps plain
values as they are. Anything else (an object a text-encoder node attached) raises NotStorable, and the cache
keeps that encoding in memory only.
"""

from __future__ import annotations

import json
from typing import Any

import torch

_PLAIN = (str, int, float, bool, type(None))


class NotStorable(TypeError):
    """The value holds something other than tensors, plain values, lists, tuples and dicts."""


def split(value: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """The JSON-able structure of `value`; its tensors (on the CPU, contiguous) go into `tensors` under their path."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "meta":
            raise NotStorable(f"{prefix} is a meta tensor")
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {"__dict__": [[_key(k, prefix), split(v, tensors, f"{prefix}/{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"__list__" if isinstance(value, list) else "__tuple__":
                [split(v, tensors, f"{prefix}/{i}") for i, v in enumerate(value)]}
    if type(value) in _PLAIN:  # exact types: an IntEnum or a numpy scalar would not come back as itself
        return value  # Python's json writes and reads NaN / Infinity
    raise NotStorable(f"{prefix} is a {type(value).__name__}, which cannot be stored")


def _key(key: Any, prefix: str) -> Any:
    if type(key) is str:
        return key
    if type(key) is int:  # optimizer state is keyed by parameter index
        return {"__int__": key}
    raise NotStorable(f"{prefix} is a dict with a {type(key).__name__} key")


def join(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of split."""
    if isinstance(structure, dict):
        if "__tensor__" in structure:
            return tensors[structure["__tensor__"]]
        if "__dict__" in structure:
            return {(k["__int__"] if isinstance(k, dict) else k): join(v, tensors) for k, v in structure["__dict__"]}
        if "__list__" in structure:
            return [join(v, tensors) for v in structure["__list__"]]
        if "__tuple__" in structure:
            return tuple(join(v, tensors) for v in structure["__tuple__"])
        raise ValueError(f"not a stored tree node: {structure!r}")
    return structure


def pack(value: Any) -> tuple[dict[str, torch.Tensor], str]:
    """One tree as (tensors, structure as a JSON string): what one safetensors file holds."""
    tensors: dict[str, torch.Tensor] = {}
    structure = split(value, tensors, "t")
    return tensors, json.dumps(structure, sort_keys=True, separators=(",", ":"))


def unpack(tensors: dict[str, torch.Tensor], structure: str) -> Any:
    return join(json.loads(structure), tensors)
