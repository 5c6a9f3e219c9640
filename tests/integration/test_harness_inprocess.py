"""The in-process helpers: ComfyUI importable with args.cpu, V1 and V3 nodes callable like the executor calls them."""

from __future__ import annotations

import torch

from .comfy_inprocess import call_node, load_builtin_extras


def test_call_node_runs_v1_and_v3_nodes_under_inference_mode(comfy):
    assert comfy.cpu_state == comfy.CPUState.CPU
    (latent,) = call_node("EmptyLatentImage", width=64, height=32, batch_size=2)
    assert latent["samples"].shape == (2, 4, 4, 8)
    assert latent["samples"].is_inference()

    load_builtin_extras(("nodes_latent.py",))
    ones = {"samples": torch.ones(1, 4, 2, 2)}
    (summed,) = call_node("LatentAdd", samples1=ones, samples2=ones)
    assert torch.equal(summed["samples"], torch.full((1, 4, 2, 2), 2.0))
