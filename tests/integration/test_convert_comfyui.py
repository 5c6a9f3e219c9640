"""ComfyUI's own LoRA loader accepts our ComfyUI output.

Models are ComfyUI's classes at full size on the meta device (key names and shapes, no RAM). LoRAs are random, on
every Linear (and Conv2d for the UNets) of the matching diffusers model (also on meta), or built from the real key
lists in tests/fixtures/lora_keys. Each is converted with `to_comfyui_state_dict`, then:

  * mapping: `comfy.lora.load_lora(sd, model_lora_keys_unet(...) + model_lora_keys_clip(...))` loads every key
    of our file (no "lora key not loaded" warning) and patches one weight per module;
  * patches: where ComfyUI also loads the original directly (Flux / SD3 diffusers keys, whose q/k/v land in slices
    of the fused weight through (key, offset) entries; kohya files; SD UNets via ComfyUI's own diffusers->SGM map),
    `comfy.lora.calculate_weight` on a random base weight gives the same result from both files.
"""

from __future__ import annotations

import pytest

from .convert_judge import (  # noqa: F401 - fixtures and helpers shared with test_convert_families.py
    RANK, SD15_UNET, SDXL_UNET, FLUX_DEV, SD3_MEDIUM, WAN_T2V_1_3B, WAN_I2V_14B, SD15_DIFFUSERS, SDXL_DIFFUSERS,
    SD3_DIFFUSERS, FLUX_DIFFUSERS, WAN_T2V_DIFFUSERS, WAN_I2V_DIFFUSERS, assert_loads_fully, assert_same_patches, convert, convert_fixture, diffusers_meta,
    every_layer, key_map, kohya_lora, meta_clip, meta_model, peft_lora, shapes_of, to_sgm_kohya, unet_shapes, cm)


# ----------------------------------------------------------------------------------------------------------------
# SD1.5 / SDXL

@pytest.mark.parametrize("family, unet_config, diffusers_config", [
    ("sd15", SD15_UNET, SD15_DIFFUSERS), ("sdxl", SDXL_UNET, SDXL_DIFFUSERS)])
def test_unet_every_layer_diffusers_lora(cm, caplog, family, unet_config, diffusers_config):
    model = meta_model(unet_config)
    layers = every_layer(diffusers_meta("UNet2DConditionModel", diffusers_config), convs=True)
    original = peft_lora("unet.", layers)
    ours = convert(original, arch=family)
    km = key_map(model)
    patches = assert_loads_fully(ours, km, caplog)
    assert len(patches) == len(layers)
    # reference: the same factors under the names ComfyUI's own diffusers->SGM map gives them
    reference = to_sgm_kohya(original, model.model_config.unet_config, cm)
    assert assert_same_patches(reference, ours, km, unet_shapes(model), caplog, sample=40) >= 40


@pytest.mark.parametrize("family, unet_config, fixture", [
    ("sd15", SD15_UNET, "sd15_kohya_diffusers_unet_names.txt"), ("sdxl", SDXL_UNET, "sdxl_kohya_sgm_names.txt")])
def test_unet_kohya_fixture_maps_fully(cm, caplog, family, unet_config, fixture):
    km = key_map(meta_model(unet_config), meta_clip(family))
    _, ours = convert_fixture(fixture, family, km, caplog)
    assert_loads_fully(ours, km, caplog)


@pytest.mark.parametrize("family, unet_config", [("sd15", SD15_UNET), ("sdxl", SDXL_UNET)])
def test_unet_and_clip_kohya_same_patches(cm, caplog, family, unet_config):
    """kohya LoRA on every UNet/CLIP weight ComfyUI maps (UNet with the alpha != rank scale): our output patches
    exactly what the original does."""
    model, clip = meta_model(unet_config), meta_clip(family)
    shapes = {**unet_shapes(model), **shapes_of(clip)}
    layers, seen = {}, set()
    for k, sgm in cm.utils.unet_to_diffusers(model.model_config.unet_config).items():
        shape = shapes.get("diffusion_model." + sgm)
        if k.endswith(".weight") and shape is not None and len(shape) in (2, 4) and sgm not in seen:
            seen.add(sgm)  # the map gives SDXL's label_emb two names (add_embedding, class_embedding): use one
            layers[k[: -len(".weight")]] = shape
    original = kohya_lora("lora_unet_", layers, alpha=1.5)
    te = {"sd15": [("lora_te_", "clip_l")], "sdxl": [("lora_te1_", "clip_l"), ("lora_te2_", "clip_g")]}[family]
    for prefix, enc in te:
        enc_layers = {k[len(f"{enc}.transformer."): -len(".weight")]: s for k, s in shapes.items()
                      if k.startswith(f"{enc}.transformer.text_model.encoder.layers.") and len(s) == 2}
        assert enc_layers
        original.update(kohya_lora(prefix, enc_layers, alpha=3.0))
    km = key_map(model, clip)
    ours = convert(original, arch=family)
    assert_loads_fully(ours, km, caplog)
    assert assert_same_patches(original, ours, km, shapes, caplog, sample=40) >= 40


# ----------------------------------------------------------------------------------------------------------------
# SD3 and Flux: ComfyUI loads diffusers keys directly (q/k/v into slices of the fused qkv)

@pytest.mark.parametrize("family, unet_config, cls_name, diffusers_config", [
    ("sd3", SD3_MEDIUM, "SD3Transformer2DModel", SD3_DIFFUSERS),
    ("flux", FLUX_DEV, "FluxTransformer2DModel", FLUX_DIFFUSERS)])
def test_dit_every_linear_diffusers_lora_same_patches(cm, caplog, family, unet_config, cls_name, diffusers_config):
    model = meta_model(unet_config)
    layers = every_layer(diffusers_meta(cls_name, diffusers_config))
    original = peft_lora("transformer.", layers)
    km = key_map(model)
    ours = convert(original, arch=family)
    assert_loads_fully(ours, km, caplog)
    assert assert_same_patches(original, ours, km, unet_shapes(model), caplog, sample=10) >= 10


@pytest.mark.parametrize("fixture", ["flux_kohya_sdscripts.txt", "flux_aitoolkit_diffusion_model_prefix.txt",
                                     "flux_diffusers_peft_transformer_prefix.txt"])
def test_flux_fixture_same_patches(cm, caplog, fixture):
    """Real Flux key lists with their real (full-size) shapes: ComfyUI loads both; same patched weights."""
    model = meta_model(FLUX_DEV)
    km = key_map(model)
    original, ours = convert_fixture(fixture, "flux", km, caplog)
    assert_loads_fully(ours, km, caplog)
    assert assert_same_patches(original, ours, km, unet_shapes(model), caplog, sample=6) >= 1


def test_flux_kohya_with_clip_maps_fully(cm, caplog):
    km = key_map(meta_model(FLUX_DEV), meta_clip("sd15"))
    assert_loads_fully(convert_fixture("flux_kohya_with_clip_te1.txt", "flux", km, caplog)[1], km, caplog)


def test_sd3_onetrainer_fixture_maps_fully(cm, caplog):
    km = key_map(meta_model(SD3_MEDIUM))
    assert_loads_fully(convert_fixture("sd3_onetrainer_mixture.txt", "sd3", km, caplog)[1], km, caplog)


# ----------------------------------------------------------------------------------------------------------------
# Wan 2.1 T2V / I2V: ComfyUI has no diffusers-name map for Wan, so only our output can be loaded

@pytest.mark.parametrize("unet_config, diffusers_config", [(WAN_T2V_1_3B, WAN_T2V_DIFFUSERS),
                                                           (WAN_I2V_14B, WAN_I2V_DIFFUSERS)],
                         ids=["t2v_1.3b", "i2v_14b"])
def test_wan_every_linear_diffusers_lora_maps_fully(cm, caplog, unet_config, diffusers_config):
    model = meta_model(unet_config)
    layers = every_layer(diffusers_meta("WanTransformer3DModel", diffusers_config))
    ours = convert(peft_lora("transformer.", layers), arch="wan")
    patches = assert_loads_fully(ours, key_map(model), caplog)
    assert len(patches) == len(layers)
    shapes = unet_shapes(model)
    for key in {k if isinstance(k, str) else k[0] for k in patches}:  # every patch fits its weight
        assert key in shapes


@pytest.mark.parametrize("fixture", ["wan_diffusers_names_finetrainers.txt", "wan_comfy_native_peft_suffix.txt",
                                     "wan_comfy_native_lightx2v_style.txt", "wan_musubi_kohya_dora.txt"])
def test_wan_fixture_maps_fully(cm, caplog, fixture):
    km = key_map(meta_model(WAN_I2V_14B))
    assert_loads_fully(convert_fixture(fixture, "wan", km, caplog)[1], km, caplog)


def test_wan_kohya_same_patches(cm, caplog):
    """musubi-style kohya keys on every 2-d weight of Wan 1.3B: ComfyUI loads both; same patched weights."""
    model = meta_model(WAN_T2V_1_3B)
    shapes = unet_shapes(model)
    layers = {k[len("diffusion_model."): -len(".weight")]: s for k, s in shapes.items()
              if k.startswith("diffusion_model.blocks.") and k.endswith(".weight") and len(s) == 2}
    original = kohya_lora("lora_unet_", layers, alpha=1.0)
    km = key_map(model)
    ours = convert(original, arch="wan")
    assert_loads_fully(ours, km, caplog)
    assert assert_same_patches(original, ours, km, shapes, caplog, sample=30) >= 30


# Sana is not judged here: ComfyUI core has no Sana model (its names come from the ComfyUI_ExtraModels custom
# node), so comfy.lora has no key map to ask. Its conversions are checked on deltas in tests/test_convert_roundtrip.py.
