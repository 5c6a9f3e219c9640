"""Weight delta of one module at strength 1 - the quantity every conversion must preserve. The maths of each
algorithm is lora_core's (adapters/lora.py, loha.py, lokr.py, dora.py); this reads it off the format-neutral
ModuleWeights the converters work on."""

from __future__ import annotations

import torch
from torch import Tensor

from ..lora_core.adapters.dora import dora_weight
from ..lora_core.adapters.loha import loha_delta
from ..lora_core.adapters.lokr import lokr_delta
from ..lora_core.adapters.lora import lora_delta
from .conversion_error import ConversionError
from .module_weights import ModuleWeights, as_matrix, fold_mid


def _f(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.to(torch.float32)


def factor_delta(m: ModuleWeights) -> Tensor | None:
    """scale * (factor product), flattened to (out, in*k*k); None for diff-only modules."""
    t = {k: _f(v) for k, v in m.tensors.items()}
    if m.kind == "lora":
        down = t["down"] if "mid" not in t else fold_mid(t["down"], t["mid"])
        return lora_delta(as_matrix(t["up"]), as_matrix(down), m.scale)
    if m.kind == "loha":
        if "hada_t1" in t:
            raise ConversionError("LoHa with Tucker tensors (hada_t1/hada_t2) is not supported")
        return loha_delta(t["hada_w1_a"], t["hada_w1_b"], t["hada_w2_a"], t["hada_w2_b"], m.scale)
    if m.kind == "lokr":
        if "lokr_t2" in t:
            raise ConversionError("LoKr with a Tucker tensor (lokr_t2) is not supported")
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        return as_matrix(lokr_delta(w1, w2, m.scale))
    return None


def weight_delta(m: ModuleWeights, base: Tensor | None = None) -> Tensor:
    """Delta W at strength 1 as an (out, in*k*k) matrix. DoRA needs the base weight (any layout of it)."""
    d = factor_delta(m)
    diff = _f(m.get("diff"))
    if diff is not None:
        d = as_matrix(diff) if d is None else d + as_matrix(diff)
    magnitude, input_scale = _f(m.get("magnitude")), _f(m.get("dora_scale"))
    if magnitude is None and input_scale is None:
        if d is None:
            raise ValueError("module has no weight delta")
        return d
    if base is None:
        raise ValueError("a DoRA delta needs the base weight")
    w = as_matrix(_f(base))
    return dora_weight(w + (d if d is not None else 0), magnitude, input_scale) - w
