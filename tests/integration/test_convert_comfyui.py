"""ComfyUI's own LoRA loader accepts our ComfyUI output (issue 3).

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

import hashlib
import logging
from collections import defaultdict

import pytest
import torch

RANK = 2


# ----------------------------------------------------------------------------------------------------------------
# model configs (full size)

SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
FLUX_DEV = {
    "image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
    "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
    "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "guidance_embed": True,
    "txt_ids_dims": [], "yak_mlp": False, "txt_norm": False,
}
SD3_MEDIUM = {
    "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 24, "input_size": None, "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 1536}},
    "num_patches": 36864, "pos_embed_max_size": 192, "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
}


def wan_config(model_type: str, dim: int, ffn: int, layers: int, in_dim: int) -> dict:
    return {"image_model": "wan2.1", "model_type": model_type, "dim": dim, "out_dim": 16, "num_heads": dim // 128,
            "ffn_dim": ffn, "num_layers": layers, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1),
            "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6, "in_dim": in_dim}


WAN_T2V_1_3B = wan_config("t2v", 1536, 8960, 30, 16)
WAN_I2V_14B = wan_config("i2v", 5120, 13824, 40, 36)

# diffusers configs of the same models
SD15_DIFFUSERS = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
SDXL_DIFFUSERS = {
    "sample_size": 128, "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10],
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
    "use_linear_projection": True,
}
SD3_DIFFUSERS = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
                 "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
                 "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192}
FLUX_DIFFUSERS = {"guidance_embeds": True}
WAN_T2V_DIFFUSERS = {"num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960, "num_layers": 30}
WAN_I2V_DIFFUSERS = {"num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824, "num_layers": 40,
                     "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}


# ----------------------------------------------------------------------------------------------------------------
# helpers

@pytest.fixture(scope="module")
def cm(comfy):
    """ComfyUI importable in-process; returns the modules the tests use."""
    import comfy.lora
    import comfy.model_detection
    import comfy.utils

    return comfy


def meta_model(unet_config: dict):
    """ComfyUI BaseModel of this config, every tensor on the meta device."""
    import comfy.model_detection

    model_config = comfy.model_detection.model_config_from_unet_config(dict(unet_config))
    assert model_config is not None, f"ComfyUI matched no model class for {unet_config}"
    with torch.device("meta"):
        return model_config.get_model({})


def meta_clip(kind: str):
    import comfy.sd1_clip
    import comfy.sdxl_clip

    cls = {"sd15": comfy.sd1_clip.SD1ClipModel, "sdxl": comfy.sdxl_clip.SDXLClipModel}[kind]
    with torch.device("meta"):
        return cls(device="meta", dtype=torch.float32)


def diffusers_meta(cls_name: str, config: dict):
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, cls_name)(**config)


def shapes_of(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _gen(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(int(hashlib.md5(name.encode()).hexdigest()[:8], 16))


def lora_factors(name: str, weight_shape: tuple[int, ...], rank: int = RANK) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) for a weight of this shape (Linear or Conv2d)."""
    g = _gen(name)
    out, inn, *k = weight_shape
    down = torch.randn((rank, inn, *k), generator=g) * 0.1
    up = torch.randn((out, rank, *[1] * len(k)), generator=g) * 0.1
    return down, up


def every_layer(model, convs: bool = False) -> dict[str, tuple[int, ...]]:
    """module name -> weight shape for every Linear (and Conv2d) of a (meta) diffusers model."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d) if convs else (torch.nn.Linear,)
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, kinds) and n}


def peft_lora(prefix: str, layers: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    sd = {}
    for name, shape in layers.items():
        down, up = lora_factors(prefix + name, shape)
        sd[f"{prefix}{name}.lora_A.weight"] = down
        sd[f"{prefix}{name}.lora_B.weight"] = up
    return sd


def kohya_lora(prefix: str, layers: dict[str, tuple[int, ...]], alpha: float = 1.0) -> dict[str, torch.Tensor]:
    sd = {}
    for name, shape in layers.items():
        down, up = lora_factors(prefix + name, shape)
        flat = prefix + name.replace(".", "_")
        sd[f"{flat}.lora_down.weight"], sd[f"{flat}.lora_up.weight"] = down, up
        sd[f"{flat}.alpha"] = torch.tensor(alpha)
    return sd


def convert(sd: dict, arch: str | None = None, allowed_unmatched: set[str] = frozenset()):
    """Our ComfyUI output; every input key must convert except `allowed_unmatched`."""
    from lora_lab.converters import to_comfyui_state_dict

    out, _, report = to_comfyui_state_dict(sd, None, arch=arch)
    unmatched = [u for u in report.unmatched if u.key not in allowed_unmatched]
    assert not unmatched, f"{len(unmatched)} keys not converted: {unmatched[:5]}"
    return out


def not_loaded(sd: dict, km: dict, caplog) -> set[str]:
    """Keys ComfyUI's loader leaves unused in this file."""
    import comfy.lora

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        comfy.lora.load_lora(sd, km, log_missing=True)
    prefix = "lora key not loaded: "
    return {r.getMessage()[len(prefix):] for r in caplog.records if r.getMessage().startswith(prefix)}


def convert_fixture(name: str, arch: str, km: dict, caplog) -> tuple[dict, dict]:
    """(original, ours) for a real key list. Keys that ComfyUI itself ignores in the original (stray tensors some
    trainers save) may be left out of ours; every other key must convert."""
    from convert_fixtures import fixture_state_dict  # tests/ is on sys.path (rootdir insertion)

    original = fixture_state_dict(name)
    return original, convert(original, arch, not_loaded(original, km, caplog))


def key_map(model=None, clip=None) -> dict:
    import comfy.lora

    km = {}
    if model is not None:
        comfy.lora.model_lora_keys_unet(model, km)
    if clip is not None:
        comfy.lora.model_lora_keys_clip(clip, km)
    return km


def load(sd: dict, km: dict, caplog) -> dict:
    """comfy.lora.load_lora, failing on any key it does not load."""
    import comfy.lora

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(sd, km, log_missing=True)
    missing = [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert not missing, f"{len(missing)} keys not loaded by ComfyUI, e.g. {missing[:5]}"
    return patches


def modules_of(sd: dict) -> set[str]:
    suffixes = (".lora_down.weight", ".lora_up.weight", ".alpha", ".diff", ".diff_b", ".dora_scale", ".lora_mid.weight")
    return {next(k[: -len(s)] for s in suffixes if k.endswith(s)) for k in sd if k.endswith(suffixes)}


def assert_loads_fully(sd: dict, km: dict, caplog) -> dict:
    patches = load(sd, km, caplog)
    targets = {k if isinstance(k, str) else k[0] for k in patches}
    assert len(patches) >= len({m for m in modules_of(sd) if not m.endswith("_b")}) and targets, "no patches"
    return patches


def patch_groups(patches: dict) -> dict[str, list]:
    """As ModelPatcher.add_patches stores them: weight key -> [(strength, adapter, strength_model, offset, fn)]."""
    out = defaultdict(list)
    for k, v in patches.items():
        key, offset, fn = (k, None, None) if isinstance(k, str) else (k[0], k[1], k[2] if len(k) > 2 else None)
        out[key].append((1.0, v, 1.0, offset, fn))
    return out


def patched(groups: dict[str, list], base: torch.Tensor, key: str) -> torch.Tensor:
    import comfy.lora

    return comfy.lora.calculate_weight(groups.get(key, []), base, key)


def assert_same_patches(original: dict, ours: dict, km: dict, shapes: dict, caplog, sample: int | None = None) -> int:
    """Both files patch the same weights; on a sample of them (every weight when sample is None) the patched
    weights are equal."""
    g_orig = patch_groups(load(original, km, caplog))
    g_ours = patch_groups(load(ours, km, caplog))
    assert set(g_orig) == set(g_ours), (f"patched weights differ: only original {sorted(set(g_orig) - set(g_ours))[:5]}, "
                                        f"only ours {sorted(set(g_ours) - set(g_orig))[:5]}")
    keys = sorted(g_orig)
    if sample is not None and len(keys) > sample:
        step = len(keys) / sample
        keys = sorted({keys[int(i * step)] for i in range(sample)} | {k for k in keys if _always_check(k)})
    for key in keys:
        base = torch.randn(shapes[key], generator=_gen("base:" + key))
        want, got = patched(g_orig, base.clone(), key), patched(g_ours, base, key)
        scale = want.abs().max().item()
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * scale), \
            f"{key}: max abs diff {(got - want).abs().max().item():.3g}"
    return len(keys)


def _always_check(key: str) -> bool:
    """Fused and row-swapped weights are always in the sample."""
    return any(s in key for s in (".qkv.", "linear1", "adaLN_modulation", "final_layer")) and (
        ".0." in key or "joint_blocks.23." in key or "final_layer" in key)


def to_sgm_kohya(diffusers_sd: dict, unet_config: dict, cm) -> dict:
    """A diffusers PEFT UNet LoRA renamed to kohya keys through ComfyUI's own diffusers->SGM map (a pure rename
    that ComfyUI loads): lora_unet_<SGM path> / lora_up / lora_down / alpha=rank (scale 1, as PEFT without alpha)."""
    sgm = {k[: -len(".weight")]: v[: -len(".weight")] for k, v in cm.utils.unet_to_diffusers(unet_config).items()
           if k.endswith(".weight")}
    out = {}
    for key, t in diffusers_sd.items():
        module, role = key[len("unet."):].rsplit(".lora_", 1)
        flat = "lora_unet_" + sgm[module].replace(".", "_")
        out[f"{flat}.lora_{'down' if role.startswith('A') else 'up'}.weight"] = t
        out[f"{flat}.alpha"] = torch.tensor(float(RANK))
    return out


def unet_shapes(model) -> dict:
    return shapes_of(model)


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


# ----------------------------------------------------------------------------------------------------------------
# Sana

def test_sana_names():
    pytest.skip("ComfyUI core has no Sana model (its ComfyUI names come from the ComfyUI_ExtraModels custom node, "
                "which is not installed here), so ComfyUI's loader cannot be asked to map a Sana LoRA")
