"""diffusers -> ComfyUI -> diffusers round trips (Flux, Sana both widths, Wan T2V and I2V), DoRA, rsLoRA, patterns."""

from __future__ import annotations

import json

import pytest
import torch

from convert_deltas import assert_same_deltas, module_deltas
from lora_lab.converters import convert_state_dict


def _lora(prefix: str, modules: dict[str, tuple[int, int]], rank=4, seed=0, dora=False, alpha=None):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (out, inn) in modules.items():
        sd[f"{prefix}.{name}.lora_A.weight"] = torch.randn(rank, inn, generator=g) * 0.1
        sd[f"{prefix}.{name}.lora_B.weight"] = torch.randn(out, rank, generator=g) * 0.1
        if dora:
            sd[f"{prefix}.{name}.lora_magnitude_vector"] = torch.rand(out, generator=g) + 0.5
    return sd


def flux_modules(h=48, blocks=2):
    m = {"norm_out.linear": (2 * h, h), "proj_out": (16, h), "x_embedder": (h, 16)}
    for i in range(blocks):
        t = f"transformer_blocks.{i}."
        for n in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                  "attn.to_out.0", "attn.to_add_out"):
            m[t + n] = (h, h)
        m[t + "norm1.linear"] = (6 * h, h)
        m[t + "ff.net.0.proj"] = (4 * h, h)
        m[t + "ff.net.2"] = (h, 4 * h)
        s = f"single_transformer_blocks.{i}."
        for n in ("attn.to_q", "attn.to_k", "attn.to_v"):
            m[s + n] = (h, h)
        m[s + "proj_mlp"] = (4 * h, h)
        m[s + "proj_out"] = (h, 5 * h)
        m[s + "norm.linear"] = (3 * h, h)
    return m


def sana_modules(h, blocks=2):
    m = {"proj_out": (32, h), "time_embed.linear": (6 * h, h), "caption_projection.linear_1": (h, 24)}
    for i in range(blocks):
        t = f"transformer_blocks.{i}."
        for n in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
                  "attn2.to_out.0"):
            m[t + n] = (h, h)
    return m


def wan_modules(h=32, blocks=2, i2v=False):
    m = {"proj_out": (64, h), "condition_embedder.time_proj": (6 * h, h),
         "condition_embedder.text_embedder.linear_1": (h, 24)}
    if i2v:
        m["condition_embedder.image_embedder.ff.net.0.proj"] = (40, 40)
    for i in range(blocks):
        b = f"blocks.{i}."
        for n in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
                  "attn2.to_out.0"):
            m[b + n] = (h, h)
        m[b + "ffn.net.0.proj"] = (3 * h, h)
        m[b + "ffn.net.2"] = (h, 3 * h)
        if i2v:
            m[b + "attn2.add_k_proj"] = (h, h)
            m[b + "attn2.add_v_proj"] = (h, h)
    return m


CASES = {
    "flux": (flux_modules(), "double_blocks.0.img_attn.qkv", None),
    "sana_600m": (sana_modules(1152), "blocks.0.attn.qkv", "sana_600m"),
    "sana_1600m": (sana_modules(2240), "blocks.1.cross_attn.kv_linear", "sana_1600m"),
    "wan_t2v": (wan_modules(), "blocks.0.self_attn.q", "wan t2v"),
    "wan_i2v": (wan_modules(i2v=True), "blocks.1.cross_attn.k_img", "wan i2v"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_diffusers_comfyui_diffusers_round_trip(case):
    modules, comfy_module, variant = CASES[case]
    sd = _lora("transformer", modules)
    comfy, cmeta, report = convert_state_dict(sd, {}, "comfyui")
    assert report.unmatched_count == 0, report
    if variant:
        assert report.variant.startswith(variant)
    assert f"lora_unet_{comfy_module.replace('.', '_')}.lora_down.weight" in comfy
    back, bmeta, report2 = convert_state_dict(comfy, cmeta, "diffusers")
    assert report2.unmatched_count == 0, report2
    assert set(back) == set(sd)
    before = module_deltas(sd)
    assert_same_deltas(before, module_deltas(comfy, cmeta))
    assert_same_deltas(before, module_deltas(back, bmeta))


def test_fused_qkv_rank_and_alpha():
    sd = _lora("transformer", {"transformer_blocks.0.attn.to_q": (48, 48), "transformer_blocks.0.attn.to_k": (48, 48),
                               "transformer_blocks.0.attn.to_v": (48, 48)}, rank=4)
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 2.0})}
    comfy, _, _ = convert_state_dict(sd, meta, "comfyui", arch="flux")
    base = "lora_unet_double_blocks_0_img_attn_qkv"
    assert comfy[f"{base}.lora_down.weight"].shape == (12, 48)  # A stacked: rank k*r
    assert comfy[f"{base}.lora_up.weight"].shape == (144, 12)   # B block-diagonal
    assert comfy[f"{base}.lora_up.weight"][:48, 4:].abs().max() == 0
    assert comfy[f"{base}.alpha"].item() == pytest.approx(6.0)  # k * alpha keeps alpha / rank


def test_missing_part_becomes_zero_block_and_norm_out_swaps():
    sd = _lora("transformer", {"single_transformer_blocks.0.attn.to_k": (48, 48), "norm_out.linear": (96, 48)})
    comfy, meta, report = convert_state_dict(sd, {}, "comfyui", arch="flux")
    up = comfy["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    assert up.shape == (7 * 48, 4) and up[:48].abs().max() == 0 and up[96:].abs().max() == 0
    swapped = comfy["lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"]
    assert torch.equal(swapped[:48], sd["transformer.norm_out.linear.lora_B.weight"][48:])
    assert_same_deltas(module_deltas(sd, arch="flux"), module_deltas(comfy, meta, arch="flux"))


def test_different_part_scales_are_baked_into_b():
    sd = _lora("transformer", {"transformer_blocks.0.attn.to_q": (48, 48), "transformer_blocks.0.attn.to_k": (48, 48)},
               rank=4)
    sd["transformer.transformer_blocks.0.attn.to_k.lora_A.weight"] = torch.randn(8, 48)
    sd["transformer.transformer_blocks.0.attn.to_k.lora_B.weight"] = torch.randn(48, 8)
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 4,
                                                 "transformer.rank_pattern": {"transformer_blocks.0.attn.to_k": 8},
                                                 "transformer.alpha_pattern": {"transformer_blocks.0.attn.to_k": 2}})}
    # q and k of one block fit several MMDiTs (Flux fuses them into qkv, Qwen-Image does not): the family is given
    comfy, cmeta, _ = convert_state_dict(sd, meta, "comfyui", arch="flux")
    assert_same_deltas(module_deltas(sd, meta, "flux"), module_deltas(comfy, cmeta, "flux"))
    back, bmeta, _ = convert_state_dict(comfy, cmeta, "diffusers", arch="flux")
    assert_same_deltas(module_deltas(sd, meta, "flux"), module_deltas(back, bmeta, "flux"))


def test_rslora_scale_is_kept_as_kohya_alpha():
    sd = _lora("transformer", {"blocks.0.attn1.to_q": (32, 32)}, rank=16)
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 16, "transformer.lora_alpha": 8,
                                                 "transformer.use_rslora": True})}
    comfy, cmeta, _ = convert_state_dict(sd, meta, "comfyui")
    assert comfy["lora_unet_blocks_0_self_attn_q.alpha"].item() == pytest.approx(8 * 4)  # 8/sqrt(16) == 32/16
    assert_same_deltas(module_deltas(sd, meta), module_deltas(comfy, cmeta))


@pytest.mark.parametrize("fused", [False, True])
def test_dora_magnitude_layouts_round_trip(fused):
    names = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k", "transformer_blocks.0.attn1.to_v"]
    sd = _lora("transformer", {n: (32, 32) for n in (names if fused else names[:1])}, dora=True)
    sd.update(_lora("transformer", {"transformer_blocks.0.attn2.to_q": (32, 32)}, seed=3, dora=True))
    comfy, cmeta, report = convert_state_dict(sd, {}, "comfyui", arch="sana")
    scale = comfy["lora_unet_blocks_0_cross_attn_q_linear.dora_scale"]
    assert scale.shape == (32, 1)  # PEFT (out,) -> ComfyUI output-axis (out, 1)
    if fused:
        assert comfy["lora_unet_blocks_0_attn_qkv.dora_scale"].shape == (96, 1)
    else:  # magnitudes of absent parts depend on the base weight: reported, not invented
        assert any("DoRA" in u.reason for u in report.unmatched)
    back, bmeta, _ = convert_state_dict(comfy, cmeta, "diffusers", arch="sana")
    before = module_deltas(sd, arch="sana")
    kept = set(module_deltas(back, bmeta, arch="sana"))
    assert_same_deltas({k: v for k, v in before.items() if k in kept}, module_deltas(comfy, cmeta, arch="sana"),
                       only_in=kept)
    assert_same_deltas({k: v for k, v in before.items() if k in kept}, module_deltas(back, bmeta, arch="sana"),
                       only_in=kept)


def test_kohya_lora_mid_is_folded_for_diffusers():
    g = torch.Generator().manual_seed(1)
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    sd = {f"{name}.lora_down.weight": torch.randn(4, 8, 1, 1, generator=g),
          f"{name}.lora_mid.weight": torch.randn(4, 4, 3, 3, generator=g),
          f"{name}.lora_up.weight": torch.randn(8, 4, 1, 1, generator=g), f"{name}.alpha": torch.tensor(2.0)}
    out, meta, _ = convert_state_dict(sd, {}, "diffusers", arch="sd15")
    assert out["unet.down_blocks.0.resnets.0.conv1.lora_A.weight"].shape == (4, 8, 3, 3)
    assert_same_deltas(module_deltas(sd, arch="sd15"), module_deltas(out, meta, arch="sd15"))
