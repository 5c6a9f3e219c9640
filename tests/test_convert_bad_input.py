"""Bad input: a clear LoraFormatError naming the problem, and no output file left behind."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lora_lab.converters import convert_file, inspect_lora
from lora_lab.lora_core.errors import LoraFormatError


def _flux_lora(path, extra=None):
    sd = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 16),
          "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(48, 4),
          "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(4.0)}
    sd.update(extra or {})
    save_file(sd, path)
    return path


def _expect(tmp_path, src, match, **kw):
    dst = tmp_path / "out.safetensors"
    with pytest.raises(LoraFormatError, match=match):
        convert_file(src, dst, "diffusers", **kw)
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_truncated_file(tmp_path):
    src = _flux_lora(tmp_path / "a.safetensors")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) - 100])
    _expect(tmp_path, src, "truncated")


def test_corrupt_header(tmp_path):
    src = tmp_path / "bad.safetensors"
    src.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"x" * 32)
    _expect(tmp_path, src, "corrupt")


def test_empty_file(tmp_path):
    src = tmp_path / "empty.safetensors"
    src.write_bytes(b"")
    _expect(tmp_path, src, "empty")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_with_code_is_refused(tmp_path, suffix):
    src = tmp_path / f"evil{suffix}"

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, src)
    _expect(tmp_path, src, "never runs code")


def test_plain_tensor_pickle_is_accepted(tmp_path):
    src = tmp_path / "ok.pt"
    torch.save({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 16),
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(48, 4)}, src)
    report = convert_file(src, tmp_path / "o.safetensors", "comfyui", arch="flux")
    assert report.unmatched_count == 0 and (tmp_path / "o.safetensors").exists()


def test_full_checkpoint_is_not_a_lora(tmp_path):
    src = tmp_path / "model.safetensors"
    save_file({f"model.diffusion_model.input_blocks.{i}.0.weight": torch.randn(2, 2) for i in range(6)}, src)
    _expect(tmp_path, src, "full model checkpoint")


def test_rank_mismatch(tmp_path):
    src = tmp_path / "r.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 16),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(48, 8)}, src)
    _expect(tmp_path, src, "inconsistent shapes.*img_attn_qkv")


def test_two_families_in_one_file(tmp_path):
    src = _flux_lora(tmp_path / "mix.safetensors", {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(4, 16),
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(16, 4)})
    _expect(tmp_path, src, "mixes two model families")


def test_existing_output_needs_overwrite(tmp_path):
    src = _flux_lora(tmp_path / "a.safetensors")
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"keep me")
    with pytest.raises(LoraFormatError, match="exists"):
        convert_file(src, dst, "diffusers")
    assert dst.read_bytes() == b"keep me"
    convert_file(src, dst, "diffusers", overwrite=True)
    assert dst.read_bytes() != b"keep me"


def test_strict_turns_unmatched_into_error(tmp_path):
    src = _flux_lora(tmp_path / "a.safetensors", {"lora_unet_double_blocks_0_img_attn_qkv.diff_b": torch.randn(48),
                                                  "lora_unet_not_a_flux_module.lora_down.weight": torch.randn(4, 16),
                                                  "lora_unet_not_a_flux_module.lora_up.weight": torch.randn(16, 4)})
    report = convert_file(src, tmp_path / "lenient.safetensors", "comfyui")
    assert [u.key for u in report.unmatched] == ["lora_unet_not_a_flux_module.lora_down.weight",
                                                 "lora_unet_not_a_flux_module.lora_up.weight"]
    _expect(tmp_path, src, "--strict", strict=True)


def test_inspect_bad_file_names_it(tmp_path):
    src = tmp_path / "empty.safetensors"
    src.write_bytes(b"")
    with pytest.raises(LoraFormatError, match="empty.safetensors"):
        inspect_lora(src)
