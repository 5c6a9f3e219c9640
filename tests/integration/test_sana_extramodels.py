"""Sana through city96/ComfyUI_ExtraModels in a real ComfyUI (in this process): random SanaMS 600M weights in
the original layout, loaded by its own SanaCheckpointLoader, with its DC-AE through its ExtraVAELoader; the
captions list goes through a test node that stands in for Gemma (SanaTextEncode's output width, 2304) into
Train LoRA's conditioning input, with no CLIP anywhere. The LoRA trains, and Load LoRA on the saved file gives
the same latent as the in-graph MODEL."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from . import extra_models
from .comfy_env import comfy_python
from .comfy_inprocess import call_node, register_lora_lab_nodes
from .sample_data import assert_latents_close

GEMMA_WIDTH = 2304  # Gemma-2 2B hidden size: what SanaTextEncode hands to Sana


@pytest.fixture(scope="module")
def sana(comfy, comfy_cache, tmp_path_factory):
    package = extra_models.checkout(tmp_path_factory.mktemp("custom_nodes"))
    if package is None:
        pytest.skip("no ComfyUI_ExtraModels: set LORA_LAB_EXTRAMODELS to a checkout (or LORA_LAB_EXTRAMODELS_GIT)")
    reason = extra_models.missing_dependency(comfy_python())
    if reason:
        pytest.skip(reason)
    for extra in extra_models.extra_pythonpath():
        if extra not in sys.path:
            sys.path.append(extra)
    sana_file = extra_models.ensure("sana", comfy_cache, package, comfy_python())
    dcae_file = extra_models.ensure("dcae", comfy_cache, package, comfy_python())

    import folder_paths
    import nodes

    register_lora_lab_nodes()
    if "SanaCheckpointLoader" not in nodes.NODE_CLASS_MAPPINGS:
        assert asyncio.run(nodes.load_custom_node(str(package), module_parent="custom_nodes")), "ExtraModels did not load"
    folder_paths.add_model_folder_path("checkpoints", str(sana_file.parent))
    folder_paths.add_model_folder_path("vae", str(dcae_file.parent))
    loras = tmp_path_factory.mktemp("loras")
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    (model,) = call_node("SanaCheckpointLoader", ckpt_name=sana_file.name, model=extra_models.SANA_CONF)
    (vae,) = call_node("ExtraVAELoader", vae_name=dcae_file.name, vae_type=extra_models.DCAE_CONF, dtype="FP32")
    return model, vae


def gemma_stand_in(texts: list[str]) -> list:
    from .test_nodes import LoraLabTestConditioning

    return [call_node(LoraLabTestConditioning, text=t, seed=0, length=300, width=GEMMA_WIDTH, pooled_width=0,
                      guidance=0.0)[0] for t in texts]


def sample(model, positive) -> torch.Tensor:
    # cfg > 1 as users sample Sana: ExtraModels' SanaMS fails on a one-row call, which cfg 1.0 makes
    latent = {"samples": torch.zeros(1, 32, 2, 2)}  # 64x64 pixels in DC-AE's 32x, 32-channel space
    (out,) = call_node("KSampler", model=model, seed=3, steps=3, cfg=2.0, sampler_name="euler", scheduler="simple",
                       positive=positive, negative=positive, latent_image=latent, denoise=1.0)
    return out["samples"]


def _padded_caption(length: int, seed: int) -> list:
    """A Gemma-width caption whose tokens after ``length`` are zero, as SanaTextEncode masks its padding."""
    emb = torch.randn(1, 300, GEMMA_WIDTH, generator=torch.Generator().manual_seed(seed))
    emb[:, length:] = 0
    return [[emb, {}]]


def test_each_row_keeps_its_own_caption_length(sana):
    """SanaMS masks every row with the second row's caption length and fails on one row: the backend calls it
    with rows of one caption length, a lone row paired with a twin, so a batch equals its rows one by one."""
    import comfy.model_management

    from lora_lab.nodes.comfy_backend import ComfyBackend, caption_length, concat_groups, encode_sample_cond

    model = sana[0].clone()
    comfy.model_management.load_models_gpu([model])
    backend = ComfyBackend(model)
    assert backend.pair_rows
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 32, 2, 2, generator=g)
    conds = [encode_sample_cond(model, _padded_caption(n, i), x[i], 0) for i, n in enumerate([120, 40, 120])]
    assert [caption_length(c) for c in conds] == [120, 40, 120]
    assert concat_groups(conds, caption_length) == [[0, 2], [1]]
    sigma = torch.tensor([0.3, 0.5, 0.7])
    with torch.no_grad():
        together = backend.denoise(x, sigma, conds)
        alone = torch.cat([backend.denoise(x[i:i + 1], sigma[i:i + 1], [conds[i]]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    # the property the grouping protects: one call with both lengths masks row 0 with row 1's length
    with torch.no_grad():
        mixed = backend._apply(x[:2], sigma[:2], conds[:2])
    assert (mixed[0] - alone[0]).abs().max() > 1e-3


def test_sana_trains_from_a_conditioning_list_and_loads_back(sana, tmp_path):
    model, vae = sana
    from lora_lab.nodes.family import model_family

    assert model_family(model) == "sana"
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a sana test picture {i}")
    dataset, _summary, captions = call_node(
        "LoraLabDataset", folder=str(folder), resolution=64, aspect_buckets=True, trigger_word="sks",
        caption_template="", default_caption="", validation=0.0, cache_folder="")
    conds = gemma_stand_in(captions)
    assert conds[0][0][0].shape == (1, 300, GEMMA_WIDTH)

    trained, lora, loss, _clip = call_node(
        "LoraLabTrain", model=model, vae=vae, dataset=dataset, conditioning=conds, steps=3, learning_rate=1e-3,
        rank=4, alpha=4.0, target_preset="attention", batch_size=1, grad_accumulation=1, lr_schedule="constant",
        warmup_steps=0, timestep_sampling="auto", precision="fp32", gradient_checkpointing=True, seed=0,
        output_name="sana_test")[:4]
    assert len(loss["loss"]) == 3 and all(np.isfinite(loss["loss"]))
    names = list(lora.weights.modules)
    assert any("cross_attn.kv_linear" in n for n in names) and any(n.endswith("attn.qkv") for n in names)

    (path,) = call_node("LoraLabSaveLora", lora=lora, name="sana_test")
    from_file, _clip, report = call_node("LoraLabLoadLora", model=model, lora_name=Path(path).name,
                                         strength_model=1.0, strength_clip=0.0)
    matched = re.search(r"(\d+) of (\d+) LoRA modules matched", report)
    assert matched and matched.group(1) == matched.group(2) == str(len(names)), report
    positive = conds[0]
    in_graph, loaded, base = sample(trained, positive), sample(from_file, positive), sample(model, positive)
    assert_latents_close(in_graph, loaded, "Sana: in-graph vs from-file (Load LoRA)")
    assert (in_graph - base).abs().max() > 10 * (in_graph - loaded).abs().max()
