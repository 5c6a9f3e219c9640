"""Weight delta of one module at strength 1 - the quantity every conversion must preserve."""

from __future__ import annotations

import torch
from torch import Tensor

from .module_weights import ModuleWeights, as_matrix, fold_mid


def _f(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.to(torch.float32)


def factor_delta(m: ModuleWeights) -> Tensor | None:
    """scale * (factor product), flattened to (out, in*k*k); None for diff-only modules."""
    t = {k: _f(v) for k, v in m.tensors.items()}
    if m.kind == "lora":
        down = t["down"] if "mid" not in t else fold_mid(t["down"], t["mid"])
        return m.scale * (as_matrix(t["up"]) @ as_matrix(down))
    if m.kind == "loha":
        if "hada_t1" in t:
            raise NotImplementedError("LoHa with Tucker tensors (hada_t1/hada_t2)")
        return m.scale * ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]))
    if m.kind == "lokr":
        if "lokr_t2" in t:
            raise NotImplementedError("LoKr with a Tucker tensor (lokr_t2)")
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return as_matrix(m.scale * torch.kron(w1, w2))
    return None


def weight_delta(m: ModuleWeights, base: Tensor | None = None) -> Tensor:
    """Delta W at strength 1, shaped like `as_matrix(base)` (or (out, in*k*k) when base is None).

    DoRA (PEFT semantics): W' = magnitude * (W + dW) / ||W + dW||_row; needs `base`.
    """
    d = factor_delta(m)
    diff = _f(m.get("diff"))
    if diff is not None:
        d = as_matrix(diff) if d is None else d + as_matrix(diff)
    magnitude = _f(m.get("magnitude"))
    if magnitude is not None:
        if base is None:
            raise ValueError("a DoRA delta needs the base weight")
        w = as_matrix(_f(base))
        merged = w + d
        return magnitude.reshape(-1, 1) * merged / merged.norm(dim=1, keepdim=True) - w
    if d is None:
        raise ValueError("module has no weight delta")
    return d


def bias_delta(m: ModuleWeights) -> Tensor | None:
    return _f(m.get("diff_b"))
