"""diffusers' own loaders accept our diffusers output (no missing/unexpected keys) with the same weight deltas.

Source LoRAs are made in diffusers names for every Linear/Conv of a tiny real model, converted to ComfyUI names
(fusing q/k/v where the original model fuses them), written, then converted back with convert_file and loaded.
"""

from __future__ import annotations

import logging

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from convert_deltas import module_deltas
from lora_lab.converters import convert_file, convert_state_dict


def _flux():
    from diffusers import FluxTransformer2DModel
    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
                                  axes_dims_rope=(2, 2, 4), guidance_embeds=True), "transformer", "flux"


def _sana():
    from diffusers import SanaTransformer2DModel
    return SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                  num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                  cross_attention_dim=16, caption_channels=8, mlp_ratio=2.5, sample_size=8,
                                  patch_size=1), "transformer", "sana"


def _wan():
    from diffusers import WanTransformer3DModel
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                 out_channels=4, text_dim=8, freq_dim=8, ffn_dim=32, num_layers=1, image_dim=8,
                                 added_kv_proj_dim=16), "transformer", "wan"


def _unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(8, 8, 16, 16), norm_num_groups=4, cross_attention_dim=12,
                                attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3), "unet", "sd15"


MODELS = {"flux": _flux, "sana": _sana, "wan": _wan, "unet_sd15": _unet}


def _targets(model):
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) or isinstance(mod, (torch.nn.Conv2d, torch.nn.Conv3d)) and mod.groups == 1:
            out[name] = mod.weight
    return out


def _source_lora(targets, prefix, rank=4, dora=()):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, w in targets.items():
        kernel = tuple(w.shape[2:])
        sd[f"{prefix}.{name}.lora_A.weight"] = torch.randn(rank, w.shape[1], *kernel, generator=g) * 0.1
        sd[f"{prefix}.{name}.lora_B.weight"] = torch.randn(w.shape[0], rank, *[1] * len(kernel), generator=g) * 0.1
    return sd


@pytest.mark.parametrize("which", sorted(MODELS))
def test_diffusers_loader_accepts_output(which, tmp_path, caplog):
    torch.manual_seed(0)
    model, prefix, arch = MODELS[which]()
    targets = _targets(model)
    source = _source_lora(targets, prefix)
    comfy, cmeta, report = convert_state_dict(source, {}, "comfyui", arch=arch)
    assert report.unmatched_count == 0, report
    save_file(comfy, tmp_path / "comfy.safetensors", metadata=cmeta)
    out = tmp_path / "diffusers.safetensors"
    report = convert_file(tmp_path / "comfy.safetensors", out, "diffusers", arch=arch)
    assert report.unmatched_count == 0, report

    base = {n: w.detach().clone() for n, w in targets.items()}
    with caplog.at_level(logging.WARNING):
        model.load_lora_adapter(str(tmp_path), weight_name=out.name, prefix=prefix, adapter_name="lab")
    problems = [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage().lower()
                or "missing" in r.getMessage().lower()]
    assert not problems, problems
    loaded = {n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    assert loaded == set(targets), set(targets) ^ loaded
    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.merge()
    expected = module_deltas(source, arch=arch)
    for name, w in targets.items():
        got = (dict(model.named_modules())[name].get_base_layer().weight - base[name]).reshape(w.shape[0], -1)
        assert torch.allclose(got, expected[("model", name)], atol=1e-5), name
