"""Keys that several model families share: a conversion follows the target model's family (the hint a node gets
from its MODEL), or - when the families convert the keys differently - stops with the candidates (CLI exit 2,
nothing written). Never exit 0 with another family's conversion. One test per pair of families that share names:
Flux / Qwen-Image, Flux / Chroma, Wan 2.1 / 2.2, SD3 / SD3.5."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_lab.__main__ import main
from lora_lab.converters import convert_state_dict, inspect_lora
from lora_lab.converters.conversion_error import AmbiguousFamilyError
from lora_lab.lora_core.families import family_of_comfy_config


def _peft(modules: dict[str, tuple[int, int]], prefix: str = "transformer.", rank: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, (rows, cols) in modules.items():
        sd[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, cols, generator=g) * 0.1
        sd[f"{prefix}{name}.lora_B.weight"] = torch.randn(rows, rank, generator=g) * 0.1
    return sd


def _kohya(modules: dict[str, tuple[int, int]], rank: int = 4) -> dict:
    sd = {}
    for name, t in _peft(modules, "", rank).items():
        module, role = name.rsplit(".lora_", 1)
        flat = "lora_unet_" + module.replace(".", "_")
        sd[f"{flat}.lora_{'down' if role.startswith('A') else 'up'}.weight"] = t
        sd[f"{flat}.alpha"] = torch.tensor(float(rank))
    return sd


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# q and k of two Qwen-Image blocks at its width: Flux, Chroma, HunyuanVideo and Flux 2 Klein 4B have these names and
# this width too (diffusers names every double-stream MMDiT block alike)
SPARSE_QWEN = _peft({f"transformer_blocks.{b}.attn.{m}": (3072, 3072) for b in (0, 1) for m in ("to_q", "to_k")},
                    prefix="")


def test_flux_qwen_sparse_qwen_image_lora_stops_with_the_candidates(tmp_path, capsys):
    with pytest.raises(AmbiguousFamilyError) as e:
        convert_state_dict(SPARSE_QWEN, {}, "comfyui")
    assert "qwen_image" in e.value.candidates and "flux" in e.value.candidates
    src, out = tmp_path / "qwen.safetensors", tmp_path / "out.safetensors"
    save_file(SPARSE_QWEN, src)
    assert main(["convert", str(src), str(out), "--to", "comfyui"]) == 2
    err = capsys.readouterr().err
    assert "ambiguous model family" in err and "qwen_image" in err and "flux" in err and "--arch" in err
    assert not out.exists()
    assert main(["convert", str(src), str(out), "--to", "comfyui", "--arch", "qwen_image"]) == 0 and out.exists()
    assert safe_open(str(out), "pt").metadata()["lora_lab.family"] == "qwen_image"


def test_flux_qwen_sparse_qwen_image_lora_to_diffusers_names_no_single_family(tmp_path, capsys):
    """In diffusers form every candidate writes these keys alike (transformer.transformer_blocks...), so the file
    converts - byte for byte what --arch qwen_image writes - but neither the report nor the file's metadata name
    Flux (or any one family): they list every candidate, Qwen-Image among them."""
    src, out, named = tmp_path / "qwen.safetensors", tmp_path / "out.safetensors", tmp_path / "named.safetensors"
    save_file(SPARSE_QWEN, src)
    assert main(["convert", str(src), str(out), "--to", "diffusers"]) == 0
    text = capsys.readouterr().out
    family_line = next(line for line in text.splitlines() if line.startswith("family:"))
    assert family_line.split("(")[0].split() == ["family:", "one", "of", "flux,", "hunyuan_video,", "chroma,",
                                                 "qwen_image,", "flux2"], family_line
    meta = safe_open(str(out), "pt").metadata()
    assert "lora_lab.family" not in meta and "qwen_image" in meta["lora_lab.family_candidates"].split(", ")
    assert main(["convert", str(src), str(named), "--to", "diffusers", "--arch", "qwen_image"]) == 0
    assert _same(load_file(out), load_file(named))
    _, _, report = convert_state_dict(SPARSE_QWEN, {}, "diffusers", hint="qwen_image")
    assert report.family == "qwen_image" and not report.candidates


def test_flux_qwen_the_models_family_decides():
    """With the MODEL a node has: Qwen-Image keeps q and k (ComfyUI maps them on Qwen-Image), Flux fuses them into
    its qkv; either way exactly what --arch gives, and the report says the model decided."""
    for family, key in (("qwen_image", "lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight"),
                        ("flux", "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight")):
        out, _, report = convert_state_dict(SPARSE_QWEN, {}, "comfyui", hint=family)
        assert report.family == family and "connected model" in report.family_note and key in out
        assert _same(out, convert_state_dict(SPARSE_QWEN, {}, "comfyui", arch=family)[0])
    with pytest.raises(AmbiguousFamilyError):  # a model none of the candidates is: no guess either
        convert_state_dict(SPARSE_QWEN, {}, "comfyui", hint="wan")
    # a hint from a ComfyUI model config's class name (nodes/family.py spells them so)
    out, _, report = convert_state_dict(SPARSE_QWEN, {}, "comfyui", hint="qwenimage")
    assert report.family == "qwen_image"


def test_flux_qwen_inspect_lists_the_candidates_and_the_evidence(tmp_path, capsys):
    src = tmp_path / "qwen.safetensors"
    save_file(SPARSE_QWEN, src)
    report = inspect_lora(src)
    assert report.ambiguous and report.family == "ambiguous" and {"flux", "qwen_image"} <= set(report.candidates)
    assert main(["inspect", str(src)]) == 0
    text = capsys.readouterr().out
    assert "candidates: " in text and "qwen_image: names 4 of 4 modules; width 3072" in text
    assert "krea2" in text and "grouped-query" in text  # ruled out, and why
    assert inspect_lora(src, hint="qwen_image").family == "qwen_image"


def test_flux_chroma_shared_blocks_convert_alike_and_the_model_names_the_family(tmp_path):
    """Flux and Chroma share their block names and width: a LoRA on those blocks converts identically for both (so
    it converts), and the report names both, not one; the model's family names it."""
    sd = _kohya({f"double_blocks.{b}.{m}": shape for b in (0, 1)
                 for m, shape in (("img_attn.qkv", (9216, 3072)), ("img_mlp.0", (12288, 3072)))})
    for to in ("comfyui", "diffusers"):
        flux, _, report = convert_state_dict(sd, {}, to)
        # none named, all listed (HunyuanVideo's double blocks have these names and width too)
        assert report.candidates == ["flux", "hunyuan_video", "chroma"] and not report.unmatched
        assert "family:   one of flux, hunyuan_video, chroma (the keys do not say which" in str(report)
        chroma, _, report = convert_state_dict(sd, {}, to, hint="chroma")
        assert report.family == "chroma" and not report.candidates and _same(flux, chroma)
    save_file(sd, tmp_path / "shared.safetensors")
    report = inspect_lora(tmp_path / "shared.safetensors")
    assert report.undecided == ["flux", "hunyuan_video", "chroma"]
    assert "family:    one of flux, hunyuan_video, chroma (" in str(report)
    # Chroma's own modules name it without help
    sd.update(_kohya({"distilled_guidance_layer.layers.0.in_layer": (5120, 5120)}))
    assert convert_state_dict(sd, {}, "comfyui")[2].family == "chroma"


@pytest.mark.parametrize("config_classes", [["WAN21_T2V"], ["WAN22_T2V", "WAN21_T2V"]])
def test_wan21_wan22_one_name_map(config_classes):
    """Wan 2.1 and 2.2 load through one name map: a 14B-shaped LoRA converts the same for either model, and a Wan
    2.2 5B one is told by its width."""
    hint = family_of_comfy_config(config_classes)
    assert hint == "wan"
    sd14 = _peft({f"blocks.{b}.{m}": (5120, 5120) for b in (0, 39) for m in ("attn1.to_q", "attn1.to_k")})
    out, _, report = convert_state_dict(sd14, {}, "comfyui", hint=hint)
    assert report.variant == "wan t2v (wan_14b)" and "lora_unet_blocks_39_self_attn_q.lora_down.weight" in out
    assert _same(out, convert_state_dict(sd14, {}, "comfyui")[0])
    sd5 = _peft({f"blocks.{b}.attn1.to_q": (3072, 3072) for b in (0, 29)})
    assert convert_state_dict(sd5, {}, "comfyui", hint=hint)[2].variant == "wan t2v (wan2.2_5b)"


@pytest.mark.parametrize("width, depth, variant", [(1536, 24, "sd3 medium / sd3.5 medium"), (2432, 38, "sd3.5 large")])
def test_sd3_sd35_told_by_width_not_guessed(width, depth, variant):
    """SD3 and SD3.5 share SD3's name map; the shared attention names fit Flux and Qwen-Image too, but only SD3 has
    these widths (and this depth: the last block). At a width and depth no family is told by, the same names stop
    with the candidates."""
    names = [f"transformer_blocks.{b}.attn.{m}" for b in (0, depth - 1) for m in ("to_q", "to_k", "to_v")]
    sd = _peft({n: (width, width) for n in names})
    out, _, report = convert_state_dict(sd, {}, "comfyui")
    assert report.family == "sd3" and not report.family_note
    assert f"lora_unet_joint_blocks_{depth - 1}_x_block_attn_qkv.lora_down.weight" in out
    at_test_width = _peft({n: (48, 48) for n in names})
    assert convert_state_dict(at_test_width, {}, "comfyui")[2].family == "sd3"  # its last block: SD3's depth
    with pytest.raises(AmbiguousFamilyError) as e:
        convert_state_dict(_peft({n.replace(f".{depth - 1}.", ".1."): (48, 48) for n in names}), {}, "comfyui")
    assert "sd3" in e.value.candidates


def test_anima_kohya_with_its_qwen3_text_encoder():
    """A kohya Anima LoRA with its text encoder: every `lora_te_layers_N_...` key converts to the name ComfyUI maps
    on the Anima text encoder (text_encoders.qwen3_06b.transformer.model....), and the family is Anima by name."""
    from convert_fixtures import fixture_sections, fixture_state_dict

    sd = fixture_state_dict("anima_formats.txt", section=3)
    te_keys = [k for k in sd if k.startswith("lora_te_")]
    assert len(te_keys) == 21 and len(fixture_sections("anima_formats.txt")[3]) == len(sd)
    out, _, report = convert_state_dict(sd, {}, "comfyui")
    assert report.family == "anima" and not report.unmatched
    te_out = sorted(k for k in out if k.startswith("text_encoders."))
    assert len(te_out) == 21 and "text_encoders.qwen3_06b.transformer.model.layers.0.mlp.down_proj.alpha" in te_out
    # the real fragment (ComfyUI #13747), whose keys alone do not say the family: with the model, every key converts
    real = fixture_state_dict("anima_kohya_te_real_partial.txt")
    out, _, report = convert_state_dict(real, {}, "comfyui", hint="anima")
    assert not report.unmatched and all(k.startswith("text_encoders.qwen3_06b.transformer.model.layers.") for k in out)
    with pytest.raises(AmbiguousFamilyError):
        convert_state_dict(real, {}, "comfyui")


def test_a_text_encoder_shared_by_families_names_them():
    """Qwen3 4B is Z-Image's and Flux 2 Klein's encoder (one ComfyUI name: qwen3_4b), and Krea 2's Qwen3-VL 4B has
    its shapes under another name: a text-encoder-only file stops with the three; the model's family decides."""
    from convert_fixtures import fixture_state_dict

    sd = fixture_state_dict("llm_text_encoders_DERIVED.txt", section=2)  # Z-Image's, kohya
    with pytest.raises(AmbiguousFamilyError) as e:
        convert_state_dict(sd, {}, "comfyui")
    assert set(e.value.candidates) == {"z_image", "flux2", "krea2"}
    for hint, name in (("zimage", "qwen3_4b"), ("flux2", "qwen3_4b"), ("krea2", "qwen3vl_4b")):
        out, _, report = convert_state_dict(sd, {}, "comfyui", hint=hint)
        assert not report.unmatched and all(k.startswith(f"text_encoders.{name}.transformer.model.") for k in out)
