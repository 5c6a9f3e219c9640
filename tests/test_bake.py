"""bake: W' = W + strength * dW on exactly the weights the LoRAs change (rows of fused weights for split parts,
DoRA per slice), every other tensor byte-identical, keys/order/metadata kept, --dtype, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_lab.__main__ import main
from lora_lab.converters.bake import bake, parse_bake_spec
from lora_lab.lora_core.adapters.dora import dora_weight

P = "model.diffusion_model."


def _sd15_like(path):
    """A few SD1.5 checkpoint tensors under their SGM names (what CheckpointLoaderSimple reads)."""
    g = torch.Generator().manual_seed(0)
    sd = {P + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": torch.randn(32, 32, generator=g),
          P + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.randn(32, 24, generator=g),
          P + "input_blocks.1.1.proj_in.weight": torch.randn(32, 32, 1, 1, generator=g),
          P + "input_blocks.1.1.proj_in.bias": torch.randn(32, generator=g),
          "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": torch.randn(24, 24, generator=g),
          "first_stage_model.decoder.conv_in.weight": torch.randn(8, 4, 3, 3, generator=g),
          "alphas_cumprod": torch.linspace(0.99, 0.01, 10, dtype=torch.float64)}
    save_file({k: v.to(torch.float16) if v.dtype == torch.float32 else v for k, v in sd.items()}, path,
              metadata={"modelspec.title": "tiny", "lora_lab_test_model": "sd15"})
    return load_file(path)


def _kohya_sd15_lora(path):
    g = torch.Generator().manual_seed(1)
    sd = {}
    for name, (o, i) in {"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (32, 32),
                         "down_blocks_0_attentions_0_proj_in": (32, 32)}.items():
        sd[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, i, generator=g)
        sd[f"lora_unet_{name}.lora_up.weight"] = torch.randn(o, 4, generator=g)
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(2.0)
    sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] = sd[
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].reshape(4, 32, 1, 1)
    sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"] = sd[
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"].reshape(32, 4, 1, 1)
    sd["lora_unet_down_blocks_0_attentions_0_proj_in.diff_b"] = torch.randn(32, generator=g)
    sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.randn(2, 24, generator=g)
    sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.randn(24, 2, generator=g)
    save_file(sd, path)
    return sd


def test_bake_adds_strength_times_delta_and_keeps_everything_else(tmp_path):
    model = _sd15_like(tmp_path / "m.safetensors")
    lora = _kohya_sd15_lora(tmp_path / "l.safetensors")
    report = bake(tmp_path / "m.safetensors", [(tmp_path / "l.safetensors", 0.85, 0.5)], tmp_path / "b.safetensors",
                  dtype="fp32")
    assert report.complete and report.tensors_changed == 4  # to_q, proj_in weight + bias, CLIP q_proj
    baked = load_file(tmp_path / "b.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as a, safe_open(str(tmp_path / "b.safetensors"), "pt") as b:
        assert list(a.keys()) == list(b.keys())
        assert {k: v for k, v in b.metadata().items() if not k.startswith("lora_lab.")} == a.metadata()
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    q = P + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    want = model[q].float() + 0.85 * 0.5 * lora[f"{k}.lora_up.weight"] @ lora[f"{k}.lora_down.weight"]
    assert torch.allclose(baked[q], want, atol=1e-5)
    p = "lora_unet_down_blocks_0_attentions_0_proj_in"
    want = model[P + "input_blocks.1.1.proj_in.weight"].float() + 0.85 * 0.5 * (
        lora[f"{p}.lora_up.weight"].reshape(32, 4) @ lora[f"{p}.lora_down.weight"].reshape(4, 32)).reshape(32, 32, 1, 1)
    assert torch.allclose(baked[P + "input_blocks.1.1.proj_in.weight"], want, atol=1e-5)
    assert torch.allclose(baked[P + "input_blocks.1.1.proj_in.bias"],
                          model[P + "input_blocks.1.1.proj_in.bias"].float() + 0.85 * lora[f"{p}.diff_b"], atol=1e-5)
    c = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    te = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(baked[te], model[te].float() + 0.5 * lora[f"{c}.lora_up.weight"] @ lora[f"{c}.lora_down.weight"],
                          atol=1e-5)
    for key in (P + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "first_stage_model.decoder.conv_in.weight"):
        assert torch.equal(baked[key], model[key].float())
    assert baked["alphas_cumprod"].dtype == torch.float32  # --dtype casts floats


def test_bake_keep_dtype_writes_untouched_tensors_bit_for_bit(tmp_path):
    model = _sd15_like(tmp_path / "m.safetensors")
    _kohya_sd15_lora(tmp_path / "l.safetensors")
    bake(tmp_path / "m.safetensors", [(tmp_path / "l.safetensors", 1.0, 1.0)], tmp_path / "b.safetensors")
    baked = load_file(tmp_path / "b.safetensors")
    assert all(baked[k].dtype == model[k].dtype for k in model)
    assert torch.equal(baked["first_stage_model.decoder.conv_in.weight"], model["first_stage_model.decoder.conv_in.weight"])


def test_bake_split_dora_parts_land_on_their_slices(tmp_path):
    """OneTrainer Flux DoRA (input-axis scale) on q and k only: each part's DoRA uses its own rows of the fused
    qkv weight, v's rows stay as they were; a diffusers LoRA without proj_mlp lands on linear1's first rows."""
    h = 16
    g = torch.Generator().manual_seed(2)
    model = {"double_blocks.0.img_attn.qkv.weight": torch.randn(3 * h, h, generator=g),
             "single_blocks.0.linear1.weight": torch.randn(7 * h, h, generator=g),
             "img_in.weight": torch.randn(h, 64, generator=g)}
    save_file(model, tmp_path / "flux.safetensors")
    lora, parts = {}, {}
    for n, k in (("to_q", 0), ("to_k", 1)):
        b = f"lora_transformer_transformer_blocks_0_attn_{n}"
        parts[k] = (torch.randn(h, 2, generator=g), torch.randn(2, h, generator=g), torch.rand(1, h, generator=g) + 0.5)
        lora[b + ".lora_up.weight"], lora[b + ".lora_down.weight"], lora[b + ".dora_scale"] = parts[k]
        lora[b + ".alpha"] = torch.tensor(2.0)
    save_file(lora, tmp_path / "dora.safetensors")
    single = {f"transformer.single_transformer_blocks.0.attn.{n}.lora_{ab}.weight": torch.randn(*s, generator=g)
              for n in ("to_q", "to_k", "to_v") for ab, s in (("A", (2, h)), ("B", (h, 2)))}
    save_file(single, tmp_path / "single.safetensors")
    report = bake(tmp_path / "flux.safetensors", [(tmp_path / "dora.safetensors", 0.7, 0.7),
                                                  (tmp_path / "single.safetensors", 1.0, 1.0)],
                  tmp_path / "b.safetensors", arch="flux")
    assert report.complete, report
    baked = load_file(tmp_path / "b.safetensors")
    w = model["double_blocks.0.img_attn.qkv.weight"]
    for k, (up, down, scale) in parts.items():
        rows = w[k * h:(k + 1) * h]
        dora = dora_weight(rows + up @ down, None, scale)  # alpha 2 / rank 2: scale 1
        assert torch.allclose(baked["double_blocks.0.img_attn.qkv.weight"][k * h:(k + 1) * h],
                              rows + 0.7 * (dora - rows), atol=1e-5)
    assert torch.equal(baked["double_blocks.0.img_attn.qkv.weight"][2 * h:], w[2 * h:])
    lin = model["single_blocks.0.linear1.weight"]
    for k, n in enumerate(("to_q", "to_k", "to_v")):
        d = single[f"transformer.single_transformer_blocks.0.attn.{n}.lora_B.weight"] @ \
            single[f"transformer.single_transformer_blocks.0.attn.{n}.lora_A.weight"]
        assert torch.allclose(baked["single_blocks.0.linear1.weight"][k * h:(k + 1) * h], lin[k * h:(k + 1) * h] + d,
                              atol=1e-5)
    assert torch.equal(baked["single_blocks.0.linear1.weight"][3 * h:], lin[3 * h:])


def test_bake_exit_status_and_errors(tmp_path, capsys):
    _sd15_like(tmp_path / "m.safetensors")
    _kohya_sd15_lora(tmp_path / "l.safetensors")
    extra = load_file(tmp_path / "l.safetensors")
    extra["lora_unet_not_in_this_model.lora_down.weight"] = torch.randn(2, 8)
    extra["lora_unet_not_in_this_model.lora_up.weight"] = torch.randn(8, 2)
    save_file(extra, tmp_path / "x.safetensors")
    assert main(["bake", str(tmp_path / "m.safetensors"), f"{tmp_path / 'l.safetensors'}:0.85",
                 "-o", str(tmp_path / "b.safetensors")]) == 0
    assert main(["bake", str(tmp_path / "m.safetensors"), f"{tmp_path / 'x.safetensors'}:0.85",
                 "-o", str(tmp_path / "c.safetensors")]) == 3
    assert "not_in_this_model" in capsys.readouterr().out and (tmp_path / "c.safetensors").exists()
    save_file({"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.randn(2, 16),
               "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.randn(16, 2)}, tmp_path / "wan.safetensors")
    assert main(["bake", str(tmp_path / "m.safetensors"), str(tmp_path / "wan.safetensors"),
                 "-o", str(tmp_path / "d.safetensors")]) == 2
    assert "none of the LoRAs' modules match" in capsys.readouterr().err and not (tmp_path / "d.safetensors").exists()


def test_parse_bake_spec():
    assert parse_bake_spec("a.safetensors:0.85")[1:] == (0.85, 0.85)
    assert parse_bake_spec("a.safetensors:0.85:0.5")[1:] == (0.85, 0.5)
    assert parse_bake_spec("a.safetensors") == (parse_bake_spec("a.safetensors")[0], 1.0, 1.0)


RSS_SCRIPT = textwrap.dedent("""
    import sys, threading, time, gc
    from lora_lab.converters.bake import bake
    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    gc.collect()
    base = peak = rss()
    done = False
    def watch():
        global peak
        while not done:
            peak = max(peak, rss())
            time.sleep(0.002)
    t = threading.Thread(target=watch, daemon=True); t.start()
    bake(sys.argv[1], [(sys.argv[2], 0.85, 0.85)], sys.argv[3])
    done = True; t.join()
    print(peak - base)
""")


@pytest.mark.slow
def test_bake_memory_stays_under_a_quarter_of_the_checkpoint(tmp_path):
    """A 256 MB fp16 model (128 tensors of 2 MB: SD1.5's largest LoRA-patched tensor is ~1% of its file), a LoRA on
    half of them: peak anonymous RSS growth < 25% of the file."""
    from lora_lab.lora_core.files.safetensors_io import write_streaming

    n, rows, cols = 128, 1024, 1024
    entries = [(f"{P}blocks.{i}.attn.qkv.weight", torch.float16, (rows, cols)) for i in range(n)]
    write_streaming(tmp_path / "m.safetensors", entries, {"x": "y"},
                    ((k, torch.randn(s, dtype=torch.float32).to(d)) for k, d, s in entries))
    g = torch.Generator().manual_seed(0)
    save_file({f"diffusion_model.blocks.{i}.attn.qkv.lora_{ab}.weight": torch.randn(*s, generator=g)
               for i in range(0, n, 2) for ab, s in (("A", (8, cols)), ("B", (rows, 8)))}, tmp_path / "l.safetensors")
    size = (tmp_path / "m.safetensors").stat().st_size
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path / "m.safetensors"), str(tmp_path / "l.safetensors"),
                          str(tmp_path / "b.safetensors")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout.split()[-1])
    assert growth < 0.25 * size, f"peak RSS growth {growth / 1e6:.0f} MB for a {size / 1e6:.0f} MB model"
    print(f"bake RSS growth {growth / 1e6:.1f} MB = {100 * growth / size:.1f}% of {size / 1e6:.0f} MB")
