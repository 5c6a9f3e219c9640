"""The LoRA `lora-lab train` writes is one ComfyUI's own loader maps fully.

`lora-lab train` runs on tiny random Flux and Wan pipelines (diffusers, built by the test), in this ComfyUI's
python. ComfyUI's model of the same architecture is built on the meta device from the matching config; then
`comfy.lora.load_lora` with `model_lora_keys_unet` must load every key of the file, and the weights it patches
(`calculate_weight` on a zero base) must equal the trained deltas placed where ComfyUI keeps those layers
(Flux: q/k/v fused into one weight, found through ComfyUI's own diffusers map; Wan: the original names).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import pytest
import torch

pytestmark = pytest.mark.comfyui

# ComfyUI configs of the tiny models in tests/tiny_folders.py
FLUX_TINY = {"image_model": "flux", "in_channels": 4, "out_channels": 4, "patch_size": 2, "vec_in_dim": 32,
             "context_in_dim": 32, "hidden_size": 16, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1,
             "depth_single_blocks": 1, "axes_dim": [2, 2, 4], "theta": 10000, "qkv_bias": True, "guidance_embed": False,
             "txt_ids_dims": [], "yak_mlp": False, "txt_norm": False}
WAN_TINY = {"image_model": "wan2.1", "model_type": "t2v", "dim": 16, "out_dim": 4, "num_heads": 2, "ffn_dim": 32,
            "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 16, "window_size": (-1, -1), "qk_norm": True,
            "cross_attn_norm": True, "eps": 1e-6, "in_dim": 4, "text_dim": 32}
WAN_NAMES = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
             "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
             "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}


def _meta_model(unet_config: dict):
    import comfy.model_detection

    model_config = comfy.model_detection.model_config_from_unet_config(dict(unet_config))
    assert model_config is not None, f"ComfyUI matched no model class for {unet_config}"
    with torch.device("meta"):
        return model_config.get_model({})


def _train(family: str, tmp_path, *extra: str):
    from lora_lab.lora_core.cli.model_folders import inspect_folder
    from tiny_folders import make_tiny_pipeline
    from lora_lab.converters.trained_lora import FORMS
    from lora_lab.lora_core.cli.train import run_training
    from lora_lab.lora_core.cli.config import load_config

    folder = make_tiny_pipeline(tmp_path / family, family)
    dataset = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples" / "tiny_dataset"
    overrides = [f'model.path="{folder}"', f'data.path="{dataset}"', "data.resolution=64", "train.steps=2",
                 "train.batch_size=2", "train.rank=4", "train.alpha=2.0", "train.learning_rate=1e-2",
                 'train.targets="all_linear"', f'output.dir="{tmp_path / "out"}"', 'output.formats=["comfyui"]',
                 "output.loss_plot=false", *extra]
    result = run_training(load_config(None, overrides), inspect_folder(folder), FORMS)
    from lora_lab.lora_core.files.lora_file import load_lora_file

    tensors, _ = load_lora_file(tmp_path / "out" / "lora.safetensors")
    return result.lora, tensors


def _patched(tensors: dict, model, caplog) -> dict[str, torch.Tensor]:
    """comfy.lora.load_lora with the model's key map (no key left unloaded); weight key -> patch on a zero base."""
    import comfy.lora

    km = comfy.lora.model_lora_keys_unet(model, {})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(tensors, km, log_missing=True)
    missing = [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert not missing, f"{len(missing)} keys not loaded by ComfyUI, e.g. {missing[:5]}"
    groups = defaultdict(list)
    for k, v in patches.items():
        key, offset, fn = (k, None, None) if isinstance(k, str) else (k[0], k[1], k[2] if len(k) > 2 else None)
        groups[key].append((1.0, v, 1.0, offset, fn))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return {key: comfy.lora.calculate_weight(g, torch.zeros(shapes[key]), key) for key, g in groups.items()}


def _assert_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]):
    assert set(got) == set(expected), (sorted(set(got) ^ set(expected))[:8])
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("algorithm", ["lora", "lokr"])
def test_flux_cli_lora_maps_fully(comfy, tmp_path, caplog, algorithm):
    """LoRA: the converter's fused BFL keys; LoKr: diffusers-named keys ComfyUI patches into the fused slices."""
    import comfy.utils

    lora, tensors = _train("flux", tmp_path, f'train.algorithm="{algorithm}"')
    model = _meta_model(FLUX_TINY)
    got = _patched(tensors, model, caplog)
    # expected: every trained delta where ComfyUI's own diffusers->Flux map puts that layer (slices of fused weights)
    where = comfy.utils.flux_to_diffusers(FLUX_TINY, output_prefix="diffusion_model.")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected: dict[str, torch.Tensor] = {}
    for name, weights in lora.modules.items():
        target = where[f"{name}.weight"]
        key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
        full = expected.setdefault(key, torch.zeros(shapes[key]))
        delta = weights.delta()
        if offset is None:
            full += delta
        else:
            dim, start, size = offset
            full.narrow(dim, start, size).add_(delta)
    _assert_equal(got, expected)
    assert len(lora.modules) >= 10  # double + single block layers, not a handful


def test_wan_cli_lora_maps_fully(comfy, tmp_path, caplog):
    lora, tensors = _train("wan", tmp_path)
    model = _meta_model(WAN_TINY)
    got = _patched(tensors, model, caplog)
    expected = {}
    for name, weights in lora.modules.items():
        block, rest = name.split(".", 2)[:2], name.split(".", 2)[2]
        expected[f"diffusion_model.{block[0]}.{block[1]}.{WAN_NAMES[rest]}.weight"] = weights.delta()
    _assert_equal(got, expected)
