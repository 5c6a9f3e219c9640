"""PEFT LoraConfig as stored by diffusers (`lora_adapter_metadata` header) or PEFT (`adapter_config.json`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
# diffusers pipeline component -> our component (a component of its own for Anima's text_conditioner, which holds
# denoiser modules under a config of its own)
COMPONENT_PREFIXES = {"transformer": "model", "unet": "model", "text_encoder": "te1", "text_encoder_2": "te2",
                      "text_encoder_3": "te3", "text_encoder_4": "te4", "text_conditioner": "text_conditioner"}


@dataclass
class PeftConfig:
    r: int | None = None
    lora_alpha: float | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    use_dora: bool = False
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "PeftConfig":
        return cls(r=d.get("r"), lora_alpha=d.get("lora_alpha"), rank_pattern=dict(d.get("rank_pattern") or {}),
                   alpha_pattern=dict(d.get("alpha_pattern") or {}), use_rslora=bool(d.get("use_rslora", False)),
                   use_dora=bool(d.get("use_dora", False)), raw=d)

    def alpha_for(self, module: str) -> float | None:
        """PEFT's own lookup: the pattern key matching `(.*\\.)?key$` wins, else lora_alpha."""
        for key, value in self.alpha_pattern.items():
            if re.match(rf"(.*\.)?({key})$", module):
                return float(value)
        if module.endswith(".to_out.0"):  # key_format reads a plain `to_out` (HiDream, Flux 2) as `to_out.0`
            return self.alpha_for(module[:-2])
        return None if self.lora_alpha is None else float(self.lora_alpha)


def configs_from_metadata(metadata: dict[str, str], file_path: Path | None = None) -> dict[str, PeftConfig]:
    """component ("model", "te1", ...) -> PeftConfig; a config without component prefix applies to "model"."""
    raw = metadata.get(LORA_ADAPTER_METADATA_KEY)
    data: dict = {}
    if raw:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = {}
    elif file_path is not None and (file_path.parent / "adapter_config.json").is_file():
        data = json.loads((file_path.parent / "adapter_config.json").read_text())
    if not data:
        return {}
    grouped: dict[str, dict] = {}
    for key, value in data.items():
        head, _, tail = key.partition(".")
        if tail and head in COMPONENT_PREFIXES:
            grouped.setdefault(COMPONENT_PREFIXES[head], {})[tail] = value
        else:
            grouped.setdefault("model", {})[key] = value
    return {comp: PeftConfig.from_dict(d) for comp, d in grouped.items()}


def build_config(ranks: dict[str, int], alphas: dict[str, float], use_dora: bool, lora_bias: bool) -> dict:
    """LoraConfig kwargs for a set of modules: most common rank/alpha as defaults, the rest as patterns."""

    def most_common(values):
        counts: dict = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        return max(counts, key=lambda v: (counts[v], -float(v) if isinstance(v, (int, float)) else 0))

    r = most_common(ranks.values())
    alpha = most_common(alphas.values())
    names = set(ranks)

    def key(m: str) -> str:
        # PEFT matches a pattern key as a suffix ("(.*\.)?key$"): a name that ends another target's name
        # (Flux's proj_out and single_transformer_blocks.N.proj_out) is anchored, or both would take its value
        return f"^{m}$" if any(n.endswith("." + m) for n in names) else m

    config = {
        "r": int(r), "lora_alpha": float(alpha), "target_modules": sorted(ranks),
        "rank_pattern": {key(m): int(v) for m, v in ranks.items() if v != r},
        "alpha_pattern": {key(m): float(v) for m, v in alphas.items() if v != alpha},
        "use_rslora": False, "use_dora": bool(use_dora), "lora_dropout": 0.0, "bias": "none",
        "init_lora_weights": True,
    }
    if lora_bias:
        config["lora_bias"] = True
    return config
