"""Nested lists / tuples / dicts of tensors and plain values <-> (flat tensor dict, JSON structure).

How the encoding cache stores a ComfyUI CONDITIONING ([[tensor, {"pooled_output": tensor, ...}]]) or a
latent in one safetensors file. Anything else (an object a text-encoder node attached) cannot be stored:
pack raises NotStorable and the caller keeps that encoding in memory only.
"""

from __future__ import annotations

import json
from typing import Any

import torch

_PLAIN = (str, int, float, bool, type(None))


class NotStorable(TypeError):
    """The value holds something other than tensors, plain values, lists, tuples and dicts."""


def pack(value: Any) -> tuple[dict[str, torch.Tensor], str]:
    tensors: dict[str, torch.Tensor] = {}
    structure = _pack(value, tensors, "t")
    return tensors, json.dumps(structure, sort_keys=True, separators=(",", ":"))


def unpack(tensors: dict[str, torch.Tensor], structure: str) -> Any:
    return _unpack(json.loads(structure), tensors)


def _pack(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.device.type == "meta":
            raise NotStorable(f"{path} is a meta tensor")
        tensors[path] = value.detach().to("cpu").contiguous()
        return {"T": path}
    if type(value) in _PLAIN:  # exact types: an IntEnum or numpy scalar would not come back as itself
        return {"V": value}  # Python's json writes and reads NaN / Infinity
    if isinstance(value, (list, tuple)):
        items = [_pack(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
        return {"L" if isinstance(value, list) else "U": items}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise NotStorable(f"{path} is a dict with non-string keys")
        return {"D": [[k, _pack(v, tensors, f"{path}.{k}")] for k, v in value.items()]}
    return _refuse(value, path)


def _refuse(value: Any, path: str) -> Any:
    raise NotStorable(f"{path} is a {type(value).__name__}, which the cache cannot store")


def _unpack(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if "T" in node:
        return tensors[node["T"]]
    if "V" in node:
        return node["V"]
    if "L" in node:
        return [_unpack(v, tensors) for v in node["L"]]
    if "U" in node:
        return tuple(_unpack(v, tensors) for v in node["U"])
    if "D" in node:
        return {k: _unpack(v, tensors) for k, v in node["D"]}
    raise ValueError(f"not a packed tree node: {node!r}")
