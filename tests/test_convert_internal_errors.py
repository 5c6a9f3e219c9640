"""Only conversion rules give a key its reason. Anything else that goes wrong while converting is a bug: it fails
loudly (the exception propagates) on the file path and the in-memory path alike, and no output is left behind."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lora_lab.converters import convert_file, convert_state_dict
from lora_lab.converters import plan


def _lora():
    g = torch.Generator().manual_seed(0)
    return {f"transformer.transformer_blocks.0.attn.{n}.lora_{ab}.weight": torch.randn(*s, generator=g)
            for n in ("to_q", "to_k") for ab, s in (("A", (2, 16)), ("B", (16, 2)))}


def test_a_failure_inside_a_rule_is_not_a_reason(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a verdict")

    monkeypatch.setattr(plan, "fuse", broken)
    sd = _lora()
    with pytest.raises(RuntimeError, match="a bug"):
        convert_state_dict(sd, None, "comfyui", arch="flux")
    save_file(sd, tmp_path / "a.safetensors")
    with pytest.raises(RuntimeError, match="a bug"):
        convert_file(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "comfyui", arch="flux")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
