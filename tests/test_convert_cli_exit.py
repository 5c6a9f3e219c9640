"""`lora-lab convert` exit status: 0 complete, 3 written with unconverted keys listed, 2 refused with nothing
written (bad input, existing output, --strict, usage error); and no report or error ever shows a Python or
PyTorch error string."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_lab.__main__ import main

# Text that only a Python/PyTorch/safetensors exception would put in front of a user.
PYTHON_ERROR = re.compile(r"Traceback|Error\b:|aten::|Meta tensors|weights_only|SafetensorError|UnpicklingError|"
                          r"Expecting value|HeaderTooLarge|invalid header|line \d+ column|torch\.|<class ")


def _flux(path, extra=None, dora=False):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(2):
        for n in ("attn.to_q", "attn.to_k", "attn.to_v"):  # attention only: no proj_mlp (as real Flux LoRAs often are)
            sd[f"transformer.single_transformer_blocks.{i}.{n}.lora_A.weight"] = torch.randn(4, 32, generator=g)
            sd[f"transformer.single_transformer_blocks.{i}.{n}.lora_B.weight"] = torch.randn(32, 4, generator=g)
    sd.update(extra or {})
    save_file(sd, path)
    return path


def _run(capsys, *argv) -> tuple[int, str]:
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        status = e.code
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert not PYTHON_ERROR.search(text), text
    return status, text


def test_exit_0_when_every_key_converts(tmp_path, capsys):
    src = _flux(tmp_path / "a.safetensors", {"transformer.single_transformer_blocks.0.attn.to_q.alpha": torch.tensor(2.0),
                                             "orphan_module.alpha": torch.tensor(1.0)})
    status, text = _run(capsys, "convert", src, tmp_path / "b.safetensors", "--to", "comfyui")
    assert status == 0, text
    assert "unconverted keys: 0" in text and "orphan_module.alpha" in text  # dropped by nature, reason stated
    assert len(load_file(tmp_path / "b.safetensors")) == 6  # 2 fused linear1 modules: down, up, alpha


def test_exit_3_lists_the_unconverted_keys_and_writes_the_rest(tmp_path, capsys):
    src = _flux(tmp_path / "a.safetensors", {"transformer.not_a_flux_module.lora_A.weight": torch.randn(4, 32),
                                             "transformer.not_a_flux_module.lora_B.weight": torch.randn(32, 4)})
    out = tmp_path / "b.safetensors"
    status, text = _run(capsys, "convert", src, out, "--to", "comfyui")
    assert status == 3, text
    assert "transformer.not_a_flux_module.lora_A.weight: no flux module named 'not_a_flux_module'" in text
    assert out.is_file() and len(load_file(out)) == 6


def test_strict_turns_3_into_2_and_writes_nothing(tmp_path, capsys):
    src = _flux(tmp_path / "a.safetensors", {"transformer.not_a_flux_module.lora_A.weight": torch.randn(4, 32),
                                             "transformer.not_a_flux_module.lora_B.weight": torch.randn(32, 4)})
    out = tmp_path / "b.safetensors"
    status, text = _run(capsys, "convert", src, out, "--to", "comfyui", "--strict")
    assert status == 2 and "--strict" in text and "not_a_flux_module" in text
    assert not out.exists()


def test_exit_3_for_dora_the_target_cannot_express(tmp_path, capsys):
    """OneTrainer's input-axis DoRA has no PEFT layout: written without those modules, listed with the reason."""
    g = torch.Generator().manual_seed(1)
    sd = {}
    for n in ("attn_to_q", "attn_to_k", "attn_to_v", "attn_to_out_0"):
        b = f"lora_transformer_transformer_blocks_0_{n}"
        sd[b + ".lora_down.weight"], sd[b + ".lora_up.weight"] = torch.randn(4, 32, generator=g), torch.randn(32, 4)
        if n != "attn_to_out_0":
            sd[b + ".dora_scale"] = torch.rand(1, 32, generator=g)
    save_file(sd, tmp_path / "a.safetensors")
    status, text = _run(capsys, "convert", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--to", "diffusers")
    assert status == 3 and "input-axis scale" in text
    assert set(load_file(tmp_path / "b.safetensors")) == {"transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight",
                                                          "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight"}


def _truncated(p):
    _flux(p)
    p.write_bytes(p.read_bytes()[:-50])


def _not_json(p):
    p.write_bytes((16).to_bytes(8, "little") + b"{not json at all" + b"\0" * 8)


def _evil_pickle(p):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, p)


def _checkpoint(p):
    save_file({f"model.diffusion_model.input_blocks.{i}.0.weight": torch.randn(2, 2) for i in range(6)}, p)


@pytest.mark.parametrize("name, make, words", [
    ("missing.safetensors", None, "no such file"),
    ("empty.safetensors", lambda p: p.write_bytes(b""), "empty"),
    ("short.safetensors", lambda p: p.write_bytes(b"abc"), "truncated"),
    ("truncated.safetensors", _truncated, "truncated"),
    ("garbage.safetensors", _not_json, "corrupt"),
    ("evil.ckpt", _evil_pickle, "never runs code"),
    ("model.safetensors", _checkpoint, "not a LoRA"),
])
def test_exit_2_names_the_file_and_the_problem(tmp_path, capsys, name, make, words):
    src = tmp_path / name
    if make:
        make(src)
    out = tmp_path / "out.safetensors"
    status, text = _run(capsys, "convert", src, out, "--to", "comfyui")
    assert status == 2 and name in text and words in text, text
    assert not out.exists() and not list(tmp_path.glob(".out.safetensors*"))


def test_exit_2_for_usage_errors_and_existing_output(tmp_path, capsys):
    src = _flux(tmp_path / "a.safetensors")
    assert _run(capsys, "convert", src, tmp_path / "b.safetensors")[0] == 2  # --to missing
    (tmp_path / "b.safetensors").write_bytes(b"keep")
    status, text = _run(capsys, "convert", src, tmp_path / "b.safetensors", "--to", "comfyui")
    assert status == 2 and "exists" in text and (tmp_path / "b.safetensors").read_bytes() == b"keep"


def test_inspect_exit_status(tmp_path, capsys):
    src = _flux(tmp_path / "a.safetensors")
    assert _run(capsys, "inspect", src)[0] == 0
    (tmp_path / "e.safetensors").write_bytes(b"")
    status, text = _run(capsys, "inspect", tmp_path / "e.safetensors")
    assert status == 2 and "e.safetensors" in text
