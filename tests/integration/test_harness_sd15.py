"""The harness itself, on a real ComfyUI: random SD1.5 loads through stock nodes, samples reproducibly,
and a hand-made kohya LoRA applies through the stock LoraLoader with every key mapped."""

from __future__ import annotations

import torch

from .comfy_models import write_kohya_lora
from .sample_data import read_latent
from .workflows import checkpoint_sample_workflow


def _sample(server, ckpt_name, prefix, **kwargs) -> torch.Tensor:
    history = server.run(checkpoint_sample_workflow(ckpt_name, filename_prefix=prefix, **kwargs), timeout=900)
    files = server.output_files(history)
    assert len(files) == 1, f"expected one saved latent, got {files} (history outputs {history.get('outputs')})"
    return read_latent(files[0])


def test_sd15_samples_reproducibly_and_stock_lora_applies(comfy_server, sd15_checkpoint, loras_dir):
    ckpt = sd15_checkpoint.name
    mark = comfy_server.log_mark()
    base_a = _sample(comfy_server, ckpt, "latents/base_a")
    base_b = _sample(comfy_server, ckpt, "latents/base_b")
    assert base_a.shape == (1, 4, 8, 8)
    assert torch.isfinite(base_a).all()
    assert torch.equal(base_a, base_b), "same seed, same graph: latents must be bit-identical"

    other_seed = _sample(comfy_server, ckpt, "latents/seed43", seed=43)
    assert not torch.equal(base_a, other_seed), "a different seed must change the latent"

    modules = write_kohya_lora(sd15_checkpoint, loras_dir / "handmade_kohya.safetensors", pattern="_attn")
    assert len(modules) == 16 * 8, f"SD1.5 has 16 transformer blocks x 8 attention linears, got {len(modules)}"
    with_lora = _sample(comfy_server, ckpt, "latents/lora", lora=("handmade_kohya.safetensors", 1.0, 1.0))

    log = comfy_server.log_since(mark)
    assert "lora key not loaded" not in log, log[-4000:]
    assert "ERROR" not in log, log[-4000:]
    assert torch.isfinite(with_lora).all()
    change = (with_lora - base_a).abs().max().item()
    assert change > 1e-3, f"LoRA did not change the sample (max abs diff {change})"


def test_sd15_lora_strength_zero_is_identity(comfy_server, sd15_checkpoint, loras_dir):
    ckpt = sd15_checkpoint.name
    path = loras_dir / "handmade_kohya_ff.safetensors"
    write_kohya_lora(sd15_checkpoint, path, pattern="ff_net", seed=11)
    base = _sample(comfy_server, ckpt, "latents/zero_base", seed=7)
    zero = _sample(comfy_server, ckpt, "latents/zero_lora", seed=7, lora=(path.name, 0.0, 0.0))
    full = _sample(comfy_server, ckpt, "latents/full_lora", seed=7, lora=(path.name, 1.0, 0.0))
    assert torch.equal(base, zero), "strength 0 must leave the model untouched"
    assert (full - base).abs().max().item() > 1e-3


def test_test_nodes_registered_and_conditioning_depends_on_text(comfy_server):
    info = comfy_server.object_info("LoraLabTestConditioning")
    assert info, "tests/integration/test_nodes was not loaded as a custom node"
    assert not [p for p in comfy_server.custom_node_import_failures() if p.endswith("lora_lab_test_nodes")]
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_nodes import LoraLabTestConditioning

    node = LoraLabTestConditioning()
    (a,) = node.encode("a cat", 0, 7, 32, 16, 3.5)
    (b,) = node.encode("a dog", 0, 7, 32, 16, 3.5)
    (a2,) = node.encode("a cat", 0, 7, 32, 16, 3.5)
    assert a[0][0].shape == (1, 7, 32) and a[0][1]["pooled_output"].shape == (1, 16)
    assert a[0][1]["guidance"] == 3.5
    assert not a[0][0].equal(b[0][0]) and a[0][0].equal(a2[0][0])
