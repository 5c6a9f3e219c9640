"""Families that share key names, judged by ComfyUI (full-size models on the meta device).

A sparse Qwen-Image diffusers LoRA (q and k of two blocks) fits Flux, Chroma, HunyuanVideo and Flux 2 Klein as well:
converted for the model it is applied to, ComfyUI patches exactly what it patches from the original on that model;
Load LoRA and Convert LoRA with the MODEL connected do so, and without one Convert LoRA stops and asks for arch.
Flux / Chroma: their shared blocks convert alike, and ComfyUI patches the same from ours on both models. Wan 2.1 /
2.2 (one name map) and SD3 / SD3.5 (told by width): ours patches what the original (or its ComfyUI-named twin)
patches on each model.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from .convert_judge import (FLUX_DEV, SD3_MEDIUM, assert_loads_fully, assert_same_patches, cm, key_map,  # noqa: F401
                            kohya_lora, meta_model, peft_lora, unet_shapes, wan_config)
from .family_configs import QWEN_IMAGE
from .test_convert_families import CHROMA, WAN22_TI2V_5B

SPARSE = {f"transformer_blocks.{b}.attn.{m}": (3072, 3072) for b in (0, 1) for m in ("to_q", "to_k")}
SD35_LARGE = dict(SD3_MEDIUM, depth=38, qk_norm="rms", context_embedder_config={
    "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 2432}})


def convert(sd: dict, **kwargs):
    from lora_lab.converters import to_comfyui_state_dict

    out, _, report = to_comfyui_state_dict(sd, **kwargs)
    assert not report.unmatched, report
    return out, report


@pytest.mark.parametrize("hint, unet_config, prefix", [("qwen_image", QWEN_IMAGE, ""), ("flux", FLUX_DEV, "transformer."),
                                                      ("chroma", CHROMA, "transformer.")])
def test_sparse_qwen_image_lora_for_the_model_it_is_applied_to(cm, caplog, hint, unet_config, prefix):
    """ComfyUI reads these names itself on each of these models (bare on Qwen-Image, transformer. on Flux and
    Chroma, as q/k slices of the fused qkv): converted for that model, ours patches the same."""
    from lora_lab.converters.conversion_error import AmbiguousFamilyError

    original = peft_lora(prefix, SPARSE)
    with pytest.raises(AmbiguousFamilyError):
        convert(original)
    model = meta_model(unet_config)
    km, shapes = key_map(model), unet_shapes(model)
    ours, report = convert(original, hint=hint)
    assert report.family == hint
    assert_loads_fully(ours, km, caplog)
    assert assert_same_patches(original, ours, km, shapes, caplog) == (4 if hint == "qwen_image" else 2)


def test_flux_chroma_shared_blocks_patch_the_same_on_both(cm, caplog):
    layers = {f"double_blocks.{b}.{m}": s for b in (0, 18) for m, s in (
        ("img_attn.qkv", (9216, 3072)), ("img_attn.proj", (3072, 3072)), ("img_mlp.0", (12288, 3072)),
        ("txt_mlp.2", (3072, 12288)))}
    layers.update({f"single_blocks.{b}.linear1": (21504, 3072) for b in (0, 37)})
    original = kohya_lora("lora_unet_", layers, alpha=1.5)
    ours, report = convert(original)
    assert {"flux", "chroma"} <= set(report.candidates)  # the keys do not say which: all named, none chosen
    assert convert(original, hint="chroma")[1].family == "chroma"
    for config in (FLUX_DEV, CHROMA):
        model = meta_model(config)
        km = key_map(model)
        assert_loads_fully(ours, km, caplog)
        assert assert_same_patches(original, ours, km, unet_shapes(model), caplog) == len(layers)


# diffusers Wan names -> ComfyUI's (the reference ComfyUI reads: it maps no diffusers Wan names)
_WAN = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn2.to_v": "cross_attn.v", "ffn.net.0.proj": "ffn.0"}


@pytest.mark.parametrize("unet_config, width, ffn, last", [(wan_config("t2v", 5120, 13824, 40, 16), 5120, 13824, 39),
                                                        (WAN22_TI2V_5B, 3072, 14336, 29)], ids=["wan_14b", "wan22_5b"])
def test_wan21_wan22_one_name_map(cm, caplog, unet_config, width, ffn, last):
    import comfy.model_detection

    model = meta_model(unet_config)
    assert type(comfy.model_detection.model_config_from_unet_config(dict(unet_config))).__name__.startswith("WAN2")
    km, shapes = key_map(model), unet_shapes(model)
    # cross_attn.v reads the text after Wan's text_embedding projection to the model width: (width, width)
    shape = {"ffn.net.0.proj": (ffn, width)}
    layers = {f"blocks.{b}.{d}": shape.get(d, (width, width)) for b in (0, last) for d in _WAN}
    original = peft_lora("transformer.", layers)
    ours, report = convert(original, hint="wan")
    assert report.family == "wan"
    reference = {k.replace("transformer.", "diffusion_model.").replace(d, c): v for k, v in original.items()
                 for d, c in _WAN.items() if f".{d}." in k}
    assert_loads_fully(ours, km, caplog)
    assert assert_same_patches(reference, ours, km, shapes, caplog) == len(layers)


@pytest.mark.parametrize("unet_config, width, depth", [(SD3_MEDIUM, 1536, 24), (SD35_LARGE, 2432, 38)],
                         ids=["sd3_medium", "sd35_large"])
def test_sd3_sd35_told_by_width(cm, caplog, unet_config, width, depth):
    model = meta_model(unet_config)
    km, shapes = key_map(model), unet_shapes(model)
    layers = {f"transformer_blocks.{b}.attn.{m}": (width, width) for b in (0, depth - 1)
              for m in ("to_q", "to_k", "to_v", "add_q_proj")}
    original = peft_lora("transformer.", layers)
    ours, report = convert(original)  # no hint: only SD3 has these widths
    assert report.family == "sd3" and not report.family_note
    assert_loads_fully(ours, km, caplog)
    assert assert_same_patches(original, ours, km, shapes, caplog) == 4


@pytest.fixture(scope="module")
def qwen_patcher(comfy, tmp_path_factory):
    import comfy.model_patcher
    import folder_paths

    from .comfy_inprocess import register_lora_lab_nodes

    register_lora_lab_nodes()
    loras = tmp_path_factory.mktemp("loras_pairs")
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    save_file(peft_lora("", SPARSE), loras / "qwen_sparse.safetensors")
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(meta_model(QWEN_IMAGE), load_device=cpu, offload_device=cpu), loras


def test_nodes_use_the_connected_models_family(qwen_patcher):
    from .comfy_inprocess import call_node

    patcher, loras = qwen_patcher
    _model, _clip, text = call_node("LoraLabLoadLora", model=patcher, lora_name="qwen_sparse.safetensors",
                                    strength_model=1.0, strength_clip=0.0)
    assert "4 of 4 LoRA modules matched" in text and "qwen_image" in text and "connected model" in text, text
    with pytest.raises(Exception, match="Set arch"):
        call_node("LoraLabConvertLora", lora_name="qwen_sparse.safetensors", to="comfyui", output_name="no_model",
                  arch="auto", dtype="keep", strict=False)
    assert not (loras / "no_model.safetensors").exists()
    text, path = call_node("LoraLabConvertLora", lora_name="qwen_sparse.safetensors", to="comfyui",
                           output_name="with_model", arch="auto", dtype="keep", strict=False, model=patcher)
    assert "qwen_image" in text and path.endswith("with_model.safetensors")
    (report,) = call_node("LoraLabInspectLora", lora_name="qwen_sparse.safetensors")
    assert "candidates:" in report and "qwen_image" in report
