"""Synthetic LoRA state dicts built from the real key lists in shared/fixtures/lora_keys (random values)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

# The repository's own copy is the reference (it grows with the families); $LORA_KEY_FIXTURES overrides.
FIXTURES = Path(os.environ.get("LORA_KEY_FIXTURES", Path(__file__).parent / "fixtures" / "lora_keys"))

_SHAPE = re.compile(r"\[([\d, ]*)\]|torch\.Size\(\[([\d, ]*)\]\)")


def fixture_sections(name: str) -> list[list[tuple[str, tuple[int, ...] | None]]]:
    """Key groups separated by comment lines: some fixture files list excerpts of several LoRAs."""
    sections: list[list] = [[]]
    for line in (FIXTURES / name).read_text().splitlines():
        if line.strip().startswith(("#", '"""')) and sections[-1]:
            sections.append([])
        sections[-1].extend(_parse([line]))
    return [s for s in sections if s]


def fixture_lines(name: str) -> list[tuple[str, tuple[int, ...] | None]]:
    return _parse((FIXTURES / name).read_text().splitlines())


def _parse(lines) -> list[tuple[str, tuple[int, ...] | None]]:
    """(key, shape or None) for each key line (comments, URLs and range notes skipped)."""
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", "http", '"""')) or " to " in line and line[0].isdigit():
            continue
        key = re.split(r"[\t ]", line, maxsplit=1)[0]
        m = _SHAPE.search(line)
        shape = None
        if m:
            text = m.group(1) if m.group(1) is not None else m.group(2)
            shape = tuple(int(x) for x in text.split(",") if x.strip())
        out.append((key, shape))
    return out


def _seed(key: str) -> int:
    return int(hashlib.md5(key.encode()).hexdigest()[:8], 16)


def shrink(shape: tuple[int, ...], divisor: int) -> tuple[int, ...]:
    """Keep rank-sized dims (<= 256), divide model widths so tests stay tiny but keep all width ratios."""
    return tuple(d // divisor if d > 256 else d for d in shape)


def random_tensor(key: str, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(_seed(key))
    if key.endswith(".alpha"):
        return torch.tensor(float(torch.randint(1, 17, (), generator=g)))
    return (torch.randn(shape, generator=g) * 0.1).to(dtype)


# Tiny default widths for key lists printed without shapes: (out, in) per module-name pattern.
H = 16


def guess_shape(key: str) -> tuple[int, ...]:
    module, _, role = key.rpartition(".")
    if role == "weight":
        module, _, role = module.rpartition(".")
        role += ".weight"
    r = 4
    out, inn = H, H
    name = module
    if re.search(r"(ffn[._]0|ff[._]net[._]0[._]proj|mlp[._]fc1|img_mlp[._]0|txt_mlp[._]0)$", name):
        out = 4 * H
    if re.search(r"(ffn[._]2|ff[._]net[._]2|mlp[._]fc2|img_mlp[._]2|txt_mlp[._]2)$", name):
        inn = 4 * H
    if re.search(r"(attn[._]qkv|attn_qkv)$", name):
        out = 3 * H
    if re.search(r"attn2[._]to_[kv]$", name) and "lora_te" not in key:
        inn = 24  # cross-attention context width
    if role in ("lora_down.weight", "lora_A.weight", "down.weight"):
        return (r, inn)
    if role in ("lora_up.weight", "lora_B.weight", "up.weight"):
        return (out, r)
    if role == "alpha":
        return ()
    if role == "dora_scale":
        return (out, 1)
    if role == "diff_b":
        return (out,)
    if role == "diff_m":
        return (1, 6, H)
    if role == "diff":
        return (H,) if "norm" in name else (out, inn)
    if role in ("lokr_w1",):
        return (4, 4)
    if role in ("lokr_w2",):
        return (out // 4, inn // 4)
    if role in ("hada_w1_a", "hada_w2_a"):
        return (out, r)
    if role in ("hada_w1_b", "hada_w2_b"):
        return (r, inn)
    return (out, inn)


def complete_modules(keys: list[str]) -> list[str]:
    """Excerpts list some modules partially: add the missing down/up partner of each LoRA module."""
    pairs = (("lora_down.weight", "lora_up.weight"), ("lora_A.weight", "lora_B.weight"), ("lora.down.weight", "lora.up.weight"),
             ("_lora.down.weight", "_lora.up.weight"), ("lokr_w1", "lokr_w2"))
    out = list(keys)
    have = set(keys)
    for k in keys:
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                if k.endswith(x):
                    partner = k[: -len(x)] + y
                    if partner not in have:
                        have.add(partner)
                        out.append(partner)
        if k.endswith(".dora_scale") or k.endswith(".alpha"):
            base = k.rsplit(".", 1)[0]
            weights = (".lora_down.weight", ".lora_A.weight", ".lokr_w1", ".hada_w1_a", ".diff", ".lora.down.weight")
            if not any(base + w in have for w in weights):
                for suffix in (".lora_down.weight", ".lora_up.weight"):
                    have.add(base + suffix)
                    out.append(base + suffix)
    return out


def fixture_state_dict(name: str, divisor: int = 1, section: int | None = None) -> dict[str, torch.Tensor]:
    lines = fixture_lines(name) if section is None else fixture_sections(name)[section]
    shapes = dict(lines)
    keys = complete_modules([k for k, _ in lines])
    sd = {}
    for k in keys:
        shape = shapes.get(k)
        shape = shrink(shape, divisor) if shape is not None else guess_shape(k)
        sd[k] = random_tensor(k, shape)
    return sd
