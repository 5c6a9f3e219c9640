"""Bake LoRAs into a model file: W' = W + strength * dW for every weight a LoRA changes, streamed tensor by tensor.

The model (a checkpoint or a diffusion-model .safetensors) is read one tensor at a time and written in the same
order with the same keys and metadata, so ComfyUI's CheckpointLoaderSimple / UNETLoader load the result as they
loaded the input. Memory stays bounded: the LoRAs, and the few tensors between reading and writing.
DoRA modules use the weight as it is when they are applied (W + s * (DoRA(W) - W), ComfyUI's strength rule).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from ..lora_core.errors import LoraFormatError
from ..lora_core.files.safetensors_io import write_streaming
from .bake_targets import Target, locate
from .convert import DTYPES, check_output_path
from .delta import weight_delta
from .lora_modules import read_lora_modules
from .merge import module_label
from .module_weights import ModuleWeights, as_matrix
from .report import UnmatchedKey
from .source import SafetensorsSource, open_source
from .torch_threads import torch_threads


@dataclass
class Patch:
    strength: float
    weights: ModuleWeights
    rows: tuple[int, int] | None
    bias: bool  # this patch adds the module's bias delta (diff_b) to a bias tensor


@dataclass
class BakeReport:
    model: str
    loras: list[str]
    output: str | None = None
    modules_applied: int = 0
    tensors_changed: int = 0
    unmatched: list[UnmatchedKey] = field(default_factory=list)
    dropped: list[UnmatchedKey] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unmatched

    def __str__(self) -> str:
        lines = [f"model:    {self.model}", f"loras:    {', '.join(self.loras)}",
                 f"output:   {self.output or '-'}",
                 f"applied:  {self.modules_applied} LoRA modules, {self.tensors_changed} model tensors changed",
                 f"unconverted keys: {len(self.unmatched)}"]
        lines += [f"  {u.key}: {u.reason}" for u in self.unmatched]
        if self.dropped:
            lines.append(f"dropped keys (nothing to apply): {len(self.dropped)}")
            lines += [f"  {u.key}: {u.reason}" for u in self.dropped]
        return "\n".join(lines)


def parse_bake_spec(spec: str) -> tuple[Path, float, float]:
    """'L.safetensors:0.85' (model and text encoder) or 'L.safetensors:0.85:0.5' (model, text encoder); default 1."""
    parts = str(spec).split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 2:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    model = numbers[0] if numbers else 1.0
    return Path(":".join(parts)), model, numbers[1] if len(numbers) > 1 else model


def _fits(m: ModuleWeights, target_shape: torch.Size) -> bool:
    out, inn = m.out_features, m.in_features
    if out is None:
        return "diff_b" in m.tensors
    numel = target_shape.numel()
    return out == target_shape[0] and (inn is None or out * inn == numel)


def _is_plain_lora(m: ModuleWeights) -> bool:
    return m.kind == "lora" and not {"mid", "diff", "magnitude", "dora_scale"} & set(m.tensors)


def _apply(region: Tensor, p: Patch) -> None:
    """region += strength * dW, in place; a plain LoRA as one addmm (W += s * scale * B @ A, no dW temporary)."""
    m = p.weights
    if p.bias:
        region.add_(m.tensors["diff_b"].float().reshape(region.shape), alpha=p.strength)
    elif _is_plain_lora(m):
        region.view(region.shape[0], -1).addmm_(as_matrix(m.tensors["up"].float()), as_matrix(m.tensors["down"].float()),
                                                alpha=p.strength * m.scale)
    else:
        region.add_(weight_delta(m, region).reshape(region.shape), alpha=p.strength)


def _patched(t: Tensor, patches: list[Patch]) -> Tensor:
    w = t.float()
    for p in patches:
        _apply(w if p.rows is None else w[p.rows[0]:p.rows[0] + p.rows[1]], p)
    return w


def _plan(source: SafetensorsSource, loras: list[tuple[Path, float, float]], arch: str | None,
          report: BakeReport) -> dict[str, list[Patch]]:
    keys = set(source.keys())
    patches: dict[str, list[Patch]] = {}
    for path, s_model, s_clip in loras:
        lora = read_lora_modules(path, arch, side="original")
        report.unmatched += lora.unconverted
        report.dropped += lora.dropped
        for m in lora.modules:
            strength = s_model if m.component == "model" else s_clip
            target: Target | None = locate(m.component, m.name, m.rows, keys, source.shape)
            label = f"{path.name}: {module_label(m)}"
            if target is None:
                report.unmatched.append(UnmatchedKey(label, f"the model has no weight {m.name!r} (a LoRA for another "
                                                            f"model, or a text encoder this file does not contain?)"))
                continue
            shape = torch.Size(source.shape(target.weight))
            rows = target.rows or m.rows
            region = shape if rows is None else torch.Size((rows[1], *shape[1:]))
            if not _fits(m.weights, region):
                report.unmatched.append(UnmatchedKey(label, f"its shape does not fit the model's {target.weight} "
                                                            f"{list(region)}"))
                continue
            if strength == 0:
                continue
            if m.weights.out_features is not None and not (m.weights.kind == "diff" and "diff" not in m.weights.tensors):
                patches.setdefault(target.weight, []).append(Patch(strength, m.weights, rows, False))
            if "diff_b" in m.weights.tensors and target.bias is not None:
                patches.setdefault(target.bias, []).append(Patch(strength, m.weights, rows, True))
            report.modules_applied += 1
    return patches


def bake(model: str | os.PathLike, loras: list[tuple[str | os.PathLike, float, float]], output: str | os.PathLike,
         dtype: str | None = None, arch: str | None = None, overwrite: bool = False) -> BakeReport:
    """loras: (path, strength on the diffusion model, strength on the text encoders)."""
    model, output = Path(model), Path(output)
    if dtype not in DTYPES:
        raise LoraFormatError(f"unknown dtype {dtype!r}; choose keep, fp16, bf16 or fp32")
    if not loras:
        raise LoraFormatError("bake: name at least one LoRA (path:strength)")
    check_output_path(model, output, overwrite)
    for path, *_ in loras:
        check_output_path(Path(path), output, overwrite)
    source = open_source(model)
    if not isinstance(source, SafetensorsSource):
        source.close()
        raise LoraFormatError(f"{model}: bake reads .safetensors models only (convert a .ckpt with a trusted tool)")
    loras = [(Path(p), float(a), float(b)) for p, a, b in loras]
    report = BakeReport(str(model), [f"{p.name}:{a:g}" + (f":{b:g}" if b != a else "") for p, a, b in loras])
    out_dtype = DTYPES[dtype]
    try:
        with torch_threads(1), torch.no_grad():
            patches = _plan(source, loras, arch, report)
            if not patches:
                raise LoraFormatError(f"{model}: none of the LoRAs' modules match this model "
                                      f"({len(report.unmatched)} unmatched, e.g. {report.unmatched[0].key})"
                                      if report.unmatched else f"{model}: the LoRAs change nothing (all strengths 0)")

            def cast(t: Tensor) -> Tensor:
                return t.to(out_dtype) if out_dtype is not None and t.is_floating_point() else t

            def tensors() -> Iterator[tuple[str, Tensor]]:
                for key in source.keys():
                    t = source.get(key)
                    yield key, _patched(t, patches[key]).to(out_dtype or t.dtype) if key in patches else cast(t)

            entries = [(k, out_dtype if out_dtype is not None and source.dtype(k).is_floating_point else source.dtype(k),
                        source.shape(k)) for k in source.keys()]
            metadata = dict(source.metadata)
            metadata["lora_lab.baked"] = json.dumps([[p.name, a, b] for p, a, b in loras])
            write_streaming(output, entries, metadata, tensors(), depth=1)
    finally:
        source.close()
    report.tensors_changed = len(patches)
    report.output = str(output)
    return report
