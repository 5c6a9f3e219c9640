"""A model in ComfyUI's "fp8_scaled" layout (how Wan, Flux and others are commonly distributed) trains with
Train LoRA's defaults in a real ComfyUI (in this process): UNETLoader loads it with ComfyUI's mixed-precision
ops, whose Linear is not an nn.Linear and whose weights are quantized inference tensors.

Before this was handled, targeting found no layer at all ("matches no Linear/Conv layer"); on August 2026 the
quantized layers' own training path could not save their inference weights, and on January 2026 their
forward cut the graph, so nothing below a quantized layer would have learned. The checks are the properties:
every targeted block layer is a quantized layer and gets an adapter, every adapter (the first block's too)
receives gradient, the fixed-noise loss drops, and the saved file through the stock LoraLoaderModelOnly gives
the in-graph MODEL's latent."""

from __future__ import annotations

import pytest
import torch

from .test_video_wan import assert_file_matches_in_graph, clip_dataset, eval_loss, load_wan, train_on_clips



@pytest.fixture(scope="module")
def wan_fp8(comfy, model_file, tmp_path_factory):
    return load_wan("wan21_t2v_small_fp8_scaled", model_file, tmp_path_factory)[:2]


def _quantized(module) -> bool:
    return type(getattr(module, "weight", None)).__name__ == "QuantizedTensor"


def test_fp8_scaled_model_trains_with_defaults(wan_fp8, tmp_path, capsys):
    from lora_lab.lora_core.adapters.targets import select_targets

    model, vae = wan_fp8
    diffusion = model.model.diffusion_model
    modules = dict(diffusion.named_modules())
    quantized = {n for n, m in modules.items() if _quantized(m)}
    assert quantized and not any(isinstance(modules[n], torch.nn.Linear) for n in quantized)  # the path under test
    targets = select_targets(diffusion, "attention")  # Train LoRA's default preset
    assert targets and set(targets) <= quantized, set(targets) - quantized

    dataset, _summary, conds = clip_dataset(tmp_path)

    before = eval_loss(model, dataset, vae, conds)
    trained, lora, loss, _clip = train_on_clips(model, vae, dataset, conds, "wan_fp8_scaled")  # the node's defaults
    after = eval_loss(trained, dataset, vae, conds)
    with capsys.disabled():
        print(f"\nWan fp8_scaled: {len(targets)} quantized layers trained; fixed-noise loss {before:.4f} -> {after:.4f}")

    ups = {k: v for k, v in lora.state_dict().items() if k.endswith(("lora_up.weight", "lora_B.weight"))}
    assert len(ups) == len(targets), sorted(ups)[:4]
    first_block = [k for k in ups if "blocks_0_" in k or "blocks.0." in k]
    assert first_block and all(ups[k].abs().max() > 0 for k in ups), [k for k in ups if ups[k].abs().max() == 0]
    assert all(torch.isfinite(torch.tensor(loss["loss"])))
    assert after < 0.9 * before

    assert_file_matches_in_graph(model, trained, lora, "wan_fp8_scaled", conds[0])


def test_gradient_passes_through_quantized_layers_as_through_their_dequantized_weights(comfy):
    """Two scaled-fp8 layers as ComfyUI loads them (inference tensors, mixed-precision ops): with the frozen base,
    the input gradient flows through both (January's quantized forward alone cuts the graph) and matches the
    gradient through the dequantized weights, up to the fp8 rounding of the forward's input (ComfyUI's own
    training path passes the gradient straight through that rounding the same way)."""
    import comfy.ops
    import comfy.utils

    from lora_lab.lora_core.training.frozen_layers import frozen_base
    from lora_lab.nodes.comfy_backend import comfy_fetch, comfy_plain, comfy_stored

    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(32, 32, generator=g) / 6, "b": torch.randn(16, 32, generator=g) / 6}
    sd = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for name, w in weights.items():
        sd[f"{name}.weight"], sd[f"{name}.scale_weight"] = (w / 0.01).to(torch.float8_e4m3fn), torch.tensor([0.01])
        sd[f"{name}.bias"] = torch.zeros(w.shape[0])
    sd, _ = comfy.utils.convert_old_quants(sd, "", {})
    ops = comfy.ops.mixed_precision_ops({}, torch.float32)

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = ops.Linear(32, 32), ops.Linear(32, 16)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    model = Two()
    with torch.inference_mode():
        model.load_state_dict(sd, strict=False)
    assert _quantized(model.a) and _quantized(model.b) and model.a.weight.is_inference()
    x = torch.randn(8, 32, generator=g, requires_grad=True)
    with frozen_base(model, comfy_fetch, comfy_plain, comfy_stored) as stats:
        model(x).pow(2).sum().backward()
    assert stats.formula_layers == 2 and x.grad is not None
    deq = {n: (w / 0.01).to(torch.float8_e4m3fn).float() * 0.01 for n, w in weights.items()}
    xr = x.detach().clone().requires_grad_(True)
    (torch.tanh(xr @ deq["a"].t()) @ deq["b"].t()).pow(2).sum().backward()
    cos = torch.nn.functional.cosine_similarity(x.grad.flatten(), xr.grad.flatten(), dim=0)
    assert cos > 0.98, cos
