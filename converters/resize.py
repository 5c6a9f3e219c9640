"""Re-rank a LoRA by SVD: to a fixed rank, or per module by kohya's dynamic criteria.

For dW with singular values s_1 >= s_2 >= ...:
  rank          keep k = R
  sv_ratio X    keep every s_i >= s_1 / X
  sv_fro F      keep the fewest k with sqrt(sum_{i<=k} s_i^2) >= F * ||dW||_F
  sv_cumulative C  keep the fewest k with sum_{i<=k} s_i >= C * sum_i s_i
(with --rank as the upper bound in the dynamic modes). The kept part is the best rank-k approximation; each
module's relative error ||dW - dW_k||_F / ||dW||_F is reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..lora_core.errors import LoraFormatError
from .analyse import analyse
from .combine_report import CombineReport, ModuleResult
from .convert import DTYPES, check_output_path
from .low_rank import as_module, factors, relative_error, svd, truncate
from .lora_modules import read_lora_modules, write_lora
from .merge import module_label
from .plan import OutModule
from .source import open_source

METHODS = ("rank", "sv_ratio", "sv_fro", "sv_cumulative")


def kept_rank(s: Tensor, method: str, value: float | None, max_rank: int | None) -> int:
    """How many singular values to keep (at least 1, at most max_rank and len(s))."""
    s = s.double()
    if method == "rank":
        k = max_rank
    elif method == "sv_ratio":
        k = int((s >= s[0] / value).sum())
    elif method == "sv_fro":
        share = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
        k = int(torch.searchsorted(share, torch.tensor(value ** 2, dtype=share.dtype) - 1e-12)) + 1
    else:  # sv_cumulative
        share = torch.cumsum(s, 0) / s.sum()
        k = int(torch.searchsorted(share, torch.tensor(value, dtype=share.dtype) - 1e-12)) + 1
    return max(1, min(k, len(s), max_rank or len(s)))


def _check(method: str, value: float | None, rank: int | None) -> None:
    if method not in METHODS:
        raise LoraFormatError(f"unknown resize method {method!r}; choose one of {METHODS}")
    if method == "rank" and (rank is None or rank < 1):
        raise LoraFormatError("resize: give the new rank (--rank R, at least 1) or a dynamic criterion")
    if rank is not None and rank < 1:
        raise LoraFormatError(f"resize: --rank must be at least 1 (got {rank})")
    if method == "sv_ratio" and (value is None or value < 1):
        raise LoraFormatError(f"resize: --sv-ratio must be at least 1 (got {value})")
    if method in ("sv_fro", "sv_cumulative") and (value is None or not 0 < value <= 1):
        raise LoraFormatError(f"resize: --{method.replace('_', '-')} must be in (0, 1] (got {value})")


def default_target(fmt: str, diffusers_supported: bool) -> str:
    """Keep the file's side: diffusers/PEFT in, diffusers out; everything else in ComfyUI (kohya) form."""
    styles = set(fmt.split(" ")[0].split("+"))
    return "diffusers" if diffusers_supported and styles <= {"diffusers", "peft"} else "comfyui"


def resize_lora(src: str | os.PathLike, dst: str | os.PathLike, method: str = "rank", value: float | None = None,
                rank: int | None = None, to: str | None = None, arch: str | None = None, dtype: str | None = None,
                overwrite: bool = False) -> CombineReport:
    src, dst = Path(src), Path(dst)
    _check(method, value, rank)
    if dtype not in DTYPES:
        raise LoraFormatError(f"unknown dtype {dtype!r}; choose keep, fp16, bf16 or fp32")
    check_output_path(src, dst, overwrite)
    if to is None:  # the input's own side, read from its header
        source = open_source(src)
        try:
            a = analyse(source, arch)
        finally:
            source.close()
        to = default_target(a.format, a.family.diffusers_supported)
    lora = read_lora_modules(src, arch, "diffusers" if to == "diffusers" else "comfyui")
    report = CombineReport("resize", [src.name], lora.family.name, to, unmatched=list(lora.unconverted),
                           dropped=list(lora.dropped))
    resized: list[OutModule] = []
    with torch.no_grad():
        for m in lora.modules:
            w = m.weights
            f = factors(w) if w.kind != "diff" else None
            if f is None or "magnitude" in w.tensors or "dora_scale" in w.tensors:
                why = "DoRA: kept as is" if f is not None else "no factors to re-rank: kept as is"
                resized.append(m)
                report.modules.append(ModuleResult(module_label(m), w.rank, w.rank, 0.0, why))
                continue
            u, s, vh = svd(f)
            k = kept_rank(s, method, value, rank)
            out_dtype = DTYPES[dtype] or next(t.dtype for t in w.tensors.values() if t.is_floating_point())
            module = as_module(truncate(u, s, vh, k, f.in_shape), out_dtype, w.tensors.get("diff_b"))
            resized.append(OutModule(m.component, m.name, module, m.part, m.rows))
            report.modules.append(ModuleResult(module_label(m), w.rank or f.rank, k, relative_error(s, k)))
    if not resized:
        raise LoraFormatError(f"{src}: nothing to write")
    metadata = dict(lora.metadata)
    metadata.pop("lora_adapter_metadata", None)
    metadata.update({"lora_lab.resized": f"{method}" + (f" {value:g}" if value is not None else "")
                     + (f" max rank {rank}" if rank and method != "rank" else f" {rank}" if rank else ""),
                     "lora_lab.family": lora.variant})
    for module, reason in write_lora(dst, lora.family, resized, to, metadata):
        report.leave_out(module_label(module), reason)
    report.output = str(dst)
    return report
