"""CLI convert/inspect, streaming file conversion == in-memory conversion, dtype, metadata carried over."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from convert_fixtures import fixture_state_dict
from lora_lab.__main__ import main
from lora_lab.converters import comfyui_kohya_names, convert_state_dict, inspect_lora


def _write_fixture(tmp_path):
    sd = fixture_state_dict("flux_diffusers_peft_transformer_prefix.txt", 128)
    meta = {"ss_output_name": "hands", "modelspec.trigger_phrase": "hndz, good hands",
            "lora_adapter_metadata": json.dumps({"transformer.r": 32, "transformer.lora_alpha": 16})}
    src = tmp_path / "in.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, src, metadata=meta)
    return src, meta


def test_inspect_reports_format_family_ranks_alphas_triggers(tmp_path, capsys):
    src, _ = _write_fixture(tmp_path)
    r = inspect_lora(src)
    assert (r.format, r.family, r.modules, r.ranks, r.alphas) == ("diffusers", "flux", 494, [32], [16.0])
    assert r.trigger_words == ["hndz", "good hands"] and r.adapter_types == ["lora"]
    assert main(["inspect", str(src)]) == 0
    text = capsys.readouterr().out
    assert "family:    flux" in text and "rank(s):   32" in text and "hndz" in text


def test_cli_convert_streams_same_tensors_as_in_memory(tmp_path, capsys):
    src, meta = _write_fixture(tmp_path)
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(out), "--to", "comfyui"]) == 0
    assert "unconverted keys: 0" in capsys.readouterr().out
    expected, _, _ = convert_state_dict(load_file(src), meta, "comfyui")
    got = load_file(out)
    assert set(got) == set(expected)
    for k in got:
        assert got[k].dtype == expected[k].dtype and torch.equal(got[k], expected[k]), k
    with safe_open(str(out), "pt") as f:
        m = f.metadata()
    assert m["ss_output_name"] == "hands" and m["modelspec.trigger_phrase"] == "hndz, good hands"
    assert "lora_adapter_metadata" not in m
    assert main(["convert", str(src), str(out), "--to", "comfyui"]) == 2  # exists, no --overwrite: refused


def test_cli_dtype_and_diffusers_metadata(tmp_path):
    src, _ = _write_fixture(tmp_path)
    out = tmp_path / "d.safetensors"
    assert main(["convert", str(src), str(out), "--to", "diffusers", "--dtype", "fp16", "--adapter-config"]) == 0
    with safe_open(str(out), "pt") as f:
        config = json.loads(f.metadata()["lora_adapter_metadata"])
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    assert config["transformer.r"] == 32 and config["transformer.lora_alpha"] == 16
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 32


def test_comfyui_kohya_names_for_training():
    names = comfyui_kohya_names("sd15", ["input_blocks.1.1.transformer_blocks.0.attn1.to_q", "out.2"])
    assert names == {"input_blocks.1.1.transformer_blocks.0.attn1.to_q":
                     "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                     "out.2": "lora_unet_conv_out"}
    assert comfyui_kohya_names("flux", ["double_blocks.0.img_attn.qkv"]) == {
        "double_blocks.0.img_attn.qkv": "lora_unet_double_blocks_0_img_attn_qkv"}
    assert comfyui_kohya_names("sdxl", ["input_blocks.4.1.proj_in"])["input_blocks.4.1.proj_in"] == \
        "lora_unet_input_blocks_4_1_proj_in"
