"""Independent check of conversions: every module's weight delta, expressed in diffusers module space.

Names come from the family name maps (data); the maths here is plain: full delta matrices, row slices, swaps.
"""

from __future__ import annotations

import hashlib

import torch

from lora_lab.converters.analyse import analyse
from lora_lab.converters.delta import weight_delta
from lora_lab.converters.source import DictSource


def base_weight(name: str, rows: int, cols: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(hashlib.md5(name.encode()).hexdigest()[:8], 16))
    return torch.randn(rows, cols, generator=g)


def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def module_deltas(sd, metadata=None, arch=None) -> dict[tuple[str, str], torch.Tensor]:
    """(component, diffusers module name) -> delta W (and (.., name + '#bias') -> delta b), at strength 1."""
    a = analyse(DictSource(sd, metadata), arch)
    load = a.loader(a.source.get)
    out: dict[tuple[str, str], torch.Tensor] = {}
    for ref in a.refs:
        m = load(ref)
        match, comp = ref.match, ref.component
        rule = match.rule
        rows = m.out_features
        cols = m.in_features or 1
        if comp != "model" or match.side == "diffusers":
            names, sizes, swap, pad = [match.name], [rows], False, 0
        else:
            pad = 0
            if rule.ratios == (1, 1, 1, 4) and m.in_features and rows == 3 * m.in_features:
                pad = 4 * m.in_features
            total = rows + pad
            unit = total // sum(rule.ratios)
            names = [match.part_name(i) for i in range(len(rule.parts))]
            sizes = [unit * r for r in rule.ratios]
            swap = bool(rule.swap and rule.swap(total, cols))
        base = None
        if "magnitude" in m.tensors or "dora_scale" in m.tensors:  # base in diffusers space, in this layout
            parts = [base_weight(n, s, cols) for n, s in zip(names, sizes)]
            base = torch.cat(parts, 0)[: rows]
            base = _swap(base) if swap else base
        d = weight_delta(m, base) if m.kind != "diff" or "diff" in m.tensors else None
        b = m.get("diff_b")
        if pad and d is not None:
            d = torch.cat([d, d.new_zeros(pad, d.shape[1])])
        for t, suffix in ((d, ""), (b, "#bias")):
            if t is None:
                continue
            t = _swap(t) if swap else t
            for name, piece in zip(names, t.split(sizes, dim=0)):
                out[(comp, name + suffix)] = piece
    return out


def assert_same_deltas(before: dict, after: dict, atol: float = 1e-5, only_in: set | None = None) -> int:
    """Every module in `before` (or in `only_in`) has the same delta in `after`; modules only in `after` are 0."""
    keys = set(before) if only_in is None else set(only_in)
    for key in keys:
        assert key in after, f"module {key} lost in conversion"
        x, y = before[key].float(), after[key].float()
        assert x.numel() == y.numel(), f"{key}: {tuple(x.shape)} vs {tuple(y.shape)}"
        assert torch.allclose(x.reshape(y.shape), y, atol=atol, rtol=1e-4), \
            f"{key}: max abs diff {(x.reshape(y.shape) - y).abs().max():.3g}"
    for key in set(after) - set(before):
        assert after[key].abs().max() == 0, f"{key} appeared with a non-zero delta"
    return len(keys)
