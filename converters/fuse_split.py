"""Exact fuse / split / swap of adapters between fused (qkv, kv, linear1) and split (q, k, v, ...) projections.

Fuse: A stacked, B block-diagonal; rank becomes sum of ranks and alpha = scale * rank, so alpha/rank is kept.
Parts with another scale get the ratio baked into their B block. Missing parts are zero rows of B.
Split: A copied to each part, B rows sliced, alpha unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .conversion_error import ConversionError
from .delta import factor_delta
from .module_weights import ModuleWeights, fold_mid


def cat0(tensors: list[Tensor]) -> Tensor:
    """torch.cat along rows. On meta tensors (the shape-only header pass) just the shape is computed: meta cat
    runs torch's Python reference implementation, whose first use imports about a second of modules."""
    if all(t.is_meta for t in tensors):
        first = tensors[0]
        return torch.empty((sum(t.shape[0] for t in tensors), *first.shape[1:]), dtype=first.dtype, device="meta")
    return torch.cat(tensors, dim=0)


def _cat_rows(parts: list[Tensor | None], sizes: list[int], like: Tensor) -> Tensor:
    rows = [p if p is not None else like.new_zeros((n, *like.shape[1:])) for p, n in zip(parts, sizes)]
    return cat0([r.to(like.dtype) for r in rows])


def unfold_mid(m: ModuleWeights) -> ModuleWeights:
    if m.kind == "lora" and "mid" in m.tensors:
        return m.with_tensors(down=fold_mid(m.tensors["down"], m.tensors["mid"]).to(m.tensors["down"].dtype), mid=None)
    return m


def to_diff(m: ModuleWeights) -> ModuleWeights:
    """Any factorised adapter as a full weight delta (exact; used where factors cannot be kept)."""
    d = factor_delta(m)
    diff = m.get("diff")
    dtype = next(iter(m.tensors.values())).dtype
    if d is not None:
        diff = d if diff is None else d + diff.reshape(d.shape).float()
    extras = {k: v for k, v in m.tensors.items() if k in ("diff_b", "magnitude", "dora_scale")}
    return ModuleWeights("diff", {"diff": diff.to(dtype), **extras})


def _extras(parts: list[ModuleWeights | None], sizes: list[int], role: str) -> Tensor | None:
    """A per-output-row tensor (magnitude, bias delta) of the fused layer: the parts' rows, zeros for missing parts."""
    present = [p.get(role) if p is not None else None for p in parts]
    if all(t is None for t in present):
        return None
    like = next(t for t in present if t is not None)
    return _cat_rows(present, sizes, like)


def fuse(parts: list[ModuleWeights | None], sizes: list[int], shared_down: bool) -> ModuleWeights:
    """One module for the fused layer. shared_down (decided from the data by the plan): the parts are all
    present and were split from one fused module, so they share one A and B is their stack."""
    present = [p for p in parts if p is not None]
    if any(p.get("dora_scale") is not None for p in present):
        raise ConversionError("DoRA with an input-axis scale (OneTrainer/LyCORIS default) normalises each part's "
                              "own columns: it cannot be fused, and this model has no per-part key in ComfyUI")
    mags = [p.get("magnitude") for p in present]
    if any(m is not None for m in mags) and (len(present) < len(parts) or any(m is None for m in mags)):
        raise ConversionError("DoRA magnitudes of the missing parts of the fused layer are unknown (they depend "
                              "on the base weight), and this model has no per-part key in ComfyUI")
    magnitude = _extras(parts, sizes, "magnitude")
    diff_b = _extras(parts, sizes, "diff_b")
    if all(p.kind == "lora" and p.get("diff") is None for p in present):
        fused = _fuse_lora([unfold_mid(p) if p is not None else None for p in parts], sizes, shared_down)
    else:
        diffs = [to_diff(p).get("diff") if p is not None else None for p in parts]
        like = next(d for d in diffs if d is not None)
        fused = ModuleWeights("diff", {"diff": _cat_rows(diffs, sizes, like)})
    return fused.with_tensors(magnitude=magnitude, diff_b=diff_b)


def _fuse_lora(parts: list[ModuleWeights | None], sizes: list[int], shared_down: bool) -> ModuleWeights:
    """Exact: A stacked, B block-diagonal (a missing part is a zero block); or, for parts split from one fused
    module, the shared A and the stacked B. Each part keeps its scale (a ratio is baked into its B block)."""
    present = [p for p in parts if p is not None]
    scale = present[0].scale
    downs = [p.tensors["down"] for p in present]
    ups = [p.tensors["up"] for p in present]
    dtype = ups[0].dtype
    if shared_down:
        up = cat0([u.to(dtype) for u in ups])
        return ModuleWeights("lora", {"down": downs[0], "up": up}, alpha=scale * downs[0].shape[0])
    rank = sum(d.shape[0] for d in downs)
    trailing = ups[0].shape[2:]
    up = ups[0].new_zeros((sum(sizes), rank, *trailing))
    row = col = 0
    for part, n in zip(parts, sizes):
        if part is not None:
            r = part.tensors["down"].shape[0]
            block = part.tensors["up"]
            if abs(part.scale - scale) > 1e-12 * max(1.0, abs(scale)):
                block = (block.float() * (part.scale / scale)).to(dtype)  # bake the scale ratio into B
            up[row:row + n, col:col + r] = block.reshape(n, r, *trailing).to(dtype)
            col += r
        row += n
    down = cat0([d.to(downs[0].dtype) for d in downs])
    return ModuleWeights("lora", {"down": down, "up": up}, alpha=scale * rank)


def downs_equal(downs: list[Tensor]) -> bool:
    """Exact equality; the first rows are compared first so that independent A matrices are rejected cheaply."""
    first = downs[0]
    return all(d.shape == first.shape and torch.equal(d[:1], first[:1]) and torch.equal(d, first) for d in downs[1:])


def split(m: ModuleWeights, sizes: list[int]) -> list[ModuleWeights]:
    if m.get("dora_scale") is not None:
        raise ConversionError("DoRA with an input-axis scale normalises columns across the whole fused layer: "
                              "it cannot be split into parts")
    if m.kind not in ("lora", "diff"):
        m = to_diff(m)
    m = unfold_mid(m)
    out, start = [], 0
    for n in sizes:
        rows = slice(start, start + n)
        updates = {role: m.tensors[role][rows] for role in ("up", "diff", "diff_b", "magnitude") if role in m.tensors}
        out.append(m.with_tensors(**updates))
        start += n
    return out


def swap_halves(m: ModuleWeights) -> ModuleWeights:
    """Exchange the two row halves of every output-indexed tensor ((shift, scale) <-> (scale, shift))."""
    if m.kind not in ("lora", "diff"):
        m = to_diff(m)

    def swap(t: Tensor) -> Tensor:
        a, b = t.chunk(2, dim=0)
        return cat0([b, a])

    return m.with_tensors(**{r: swap(m.tensors[r]) for r in ("up", "diff", "diff_b", "magnitude") if r in m.tensors})
