"""ComfyUI as the judge of a converted LoRA (shared by the tests/integration/test_convert_*.py files).

Models are ComfyUI's classes at full size on the meta device (key names and shapes, no RAM); LoRAs are random on
every Linear (and Conv2d) of the matching diffusers model (also on meta), or built from the real key lists in
tests/fixtures/lora_keys. `load` runs comfy.lora.load_lora and fails on any "lora key not loaded";
`assert_same_patches` compares comfy.lora.calculate_weight on a random base weight for two files.
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


def assert_same_patches(original: dict, ours: dict, km: dict, shapes: dict, caplog, sample: int | None = None,
                        ours_may_add: bool = False) -> int:
    """Both files patch the same weights; on a sample of them (every weight when sample is None) the patched
    weights are equal. ours_may_add: the original is only the part ComfyUI reads, so ours may patch more."""
    g_orig = patch_groups(load(original, km, caplog))
    g_ours = patch_groups(load(ours, km, caplog))
    same = set(g_orig) <= set(g_ours) if ours_may_add else set(g_orig) == set(g_ours)
    assert same, (f"patched weights differ: only original {sorted(set(g_orig) - set(g_ours))[:5]}, "
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




def assert_patches_apply(sd: dict, km: dict, shapes: dict, caplog, sample: int = 12) -> int:
    """ComfyUI applies our file: on a sample of the patched weights, calculate_weight changes the (random) weight
    and logs no error (ComfyUI only logs, and skips, a patch whose shape does not fit)."""
    groups = patch_groups(load(sd, km, caplog))
    keys = sorted(groups)
    keys = sorted({keys[int(i * len(keys) / sample)] for i in range(min(sample, len(keys)))} | {
        k for k in keys if _always_check(k)})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for key in keys:
            base = torch.randn(shapes[key], generator=_gen("base:" + key))
            assert not torch.equal(patched(groups, base.clone(), key), base), f"{key}: the patch changed nothing"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, errors[:5]
    return len(keys)


def only_loaded(sd: dict, km: dict, caplog) -> dict:
    """The part of a file ComfyUI's own loader maps (to compare patches where it reads only some of the original)."""
    skip = not_loaded(sd, km, caplog)
    return {k: v for k, v in sd.items() if k not in skip}
