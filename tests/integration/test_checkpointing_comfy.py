"""Gradient checkpointing on ComfyUI's own model classes (UNet SD1.5/SDXL, Flux, SD3 MMDiT, Wan), with the
wrappers Train LoRA uses (frozen base layers, in-place guard, LoRA side paths) and inference-tensor weights as
ComfyUI's loaders leave them. The properties themselves are checked: every layer inside a checkpointed unit
runs exactly once more in backward, and the activation bytes kept for backward shrink."""

from __future__ import annotations

import math

import pytest
import torch

B = 2


def _ops():
    import comfy.ops

    return comfy.ops.disable_weight_init


def _unet(adm=None):
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    kw = dict(image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1], channel_mult=[1, 2],
              transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
              context_dim=32, num_heads=2, use_linear_in_transformer=adm is not None, use_spatial_transformer=True,
              dtype=torch.float32, device="cpu", operations=_ops())
    if adm:
        kw.update(num_classes="sequential", adm_in_channels=adm)
    model = UNetModel(**kw)
    inputs = dict(x=torch.randn(B, 4, 16, 16), timesteps=torch.tensor([500.0, 200.0]), context=torch.randn(B, 8, 32))
    if adm:
        inputs["y"] = torch.randn(B, adm)
    return model, inputs


def _flux():
    from comfy.ldm.flux.model import Flux

    model = Flux(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32, hidden_size=64,
                 mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000,
                 patch_size=2, qkv_bias=True, guidance_embed=False, txt_ids_dims=[], dtype=torch.float32, device="cpu",
                 operations=_ops())
    return model, dict(x=torch.randn(B, 16, 16, 16), timestep=torch.tensor([0.5, 0.2]), context=torch.randn(B, 8, 32),
                       y=torch.randn(B, 32))


def _sd3():
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    model = MMDiT(input_size=None, patch_size=2, in_channels=16, depth=2, num_patches=64 * 64, pos_embed_max_size=64,
                  adm_in_channels=32, dtype=torch.float32, device="cpu", operations=_ops(),
                  context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}})
    return model, dict(x=torch.randn(B, 16, 16, 16), t=torch.tensor([500.0, 200.0]), context=torch.randn(B, 8, 32),
                       y=torch.randn(B, 32))


def _wan():
    from comfy.ldm.wan.model import WanModel

    model = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=8, in_dim=16, dim=64, ffn_dim=128, freq_dim=32,
                     text_dim=32, out_dim=16, num_heads=2, num_layers=2, dtype=torch.float32, device="cpu", operations=_ops())
    return model, dict(x=torch.randn(B, 16, 1, 16, 16), timestep=torch.tensor([500.0, 200.0]), context=torch.randn(B, 8, 32))


def _lumina():
    """Lumina 2 / Z-Image's NextDiT with qk_norm: on August 2026 its attention takes a fused RMSNorm+RoPE kernel
    with no backward unless ComfyUI's in_training switch is set."""
    from comfy.ldm.lumina.model import NextDiT

    model = NextDiT(patch_size=2, in_channels=4, dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                    multiple_of=16, qk_norm=True, cap_feat_dim=32, axes_dims=[8, 12, 12], axes_lens=[300, 512, 512],
                    dtype=torch.float32, device="cpu", operations=_ops())
    return model, dict(x=torch.randn(B, 4, 16, 16), timesteps=torch.tensor([0.5, 0.2]), context=torch.randn(B, 8, 32),
                       num_tokens=8)


FAMILIES = {"sd15": _unet, "sdxl": lambda: _unet(48), "flux": _flux, "sd3": _sd3, "wan": _wan, "lumina": _lumina}


def _loaded_like_comfy(model):
    """Random weights, then inference tensors, as ComfyUI's loaders (which run under inference_mode) leave them."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
            if t.is_floating_point():
                t.copy_(torch.zeros_like(t) if name.endswith("bias") else
                        torch.randn(t.shape, generator=g) / math.sqrt(max(1, math.prod(t.shape[1:]))) if t.dim() > 1
                        else torch.ones_like(t))
    model.requires_grad_(False)
    with torch.inference_mode():
        state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    assert all(p.is_inference() for p in model.parameters())
    return model


def _forward_backward(model, inputs, checkpointing: bool, guard: bool, measure_bytes: bool = False,
                      recompute=None, compile: bool = False, plan_budget: float | None = None):
    """Adapter grads of one forward/backward with Train LoRA's wrappers, the bytes kept for backward, and what
    the plan and the compiler did.
    recompute: which units to checkpoint (None: all); plan_budget: make that plan as `partial` does, on this
    batch; compile: the units compiled (inductor), as the compile option does."""
    from lora_lab.lora_core.adapters.algorithms import new_adapter
    from lora_lab.lora_core.training.checkpoint_plan import choose, measure_units
    from lora_lab.lora_core.training.checkpointing import checkpoint_units, gradient_checkpointing
    from lora_lab.lora_core.training.compiled_units import compiled_units
    from lora_lab.lora_core.training.frozen_layers import frozen_base
    from lora_lab.lora_core.adapters.injection import attached
    from lora_lab.lora_core.adapters.targets import select_targets
    from lora_lab.nodes.comfy_backend import comfy_fetch, comfy_plain, comfy_stored
    from lora_lab.nodes.rope_autograd import ensure_rope_autograd
    from lora_lab.nodes.training_mode import comfy_training_mode

    ensure_rope_autograd()  # as Train LoRA does: Flux and Wan back-propagate through comfy_kitchen's RoPE
    modules = dict(model.named_modules())
    names = select_targets(model, "attention")
    gen = torch.Generator().manual_seed(0)
    adapters = {n: new_adapter(modules[n], 4, 4.0, 0.0, gen) for n in names}
    with torch.no_grad():
        for a in adapters.values():  # a non-zero B, so gradients reach A and the layers below as well
            a.up.copy_(torch.randn(a.up.shape, generator=gen) * 0.01)
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def run():
        return model(**{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})

    with torch.inference_mode(False), torch.enable_grad(), comfy_training_mode():  # as Train LoRA runs
        with frozen_base(model, comfy_fetch, comfy_plain, comfy_stored), attached(model, adapters):
            if plan_budget is not None:
                recompute = choose(measure_units(checkpoint_units(model), run, guard), plan_budget, "cpu")
            with compiled_units(checkpoint_units(model), compile) as stats, \
                    gradient_checkpointing(model, checkpointing, guard, adapted=[modules[n] for n in names],
                                           recompute=recompute):
                stats.training = True
                out = _one_pass(run, measure_bytes, pack)
                out.float().pow(2).mean().backward()
    info = {"recompute": recompute, "compiled": stats.outcome() if compile else "off", "report": stats.report()}
    return {n: a.down.grad.clone() for n, a in adapters.items()}, sum(storages.values()), info


def _one_pass(run, measure_bytes, pack):
    if measure_bytes:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return run()
    return run()


@pytest.fixture(scope="module")
def comfy_ready(comfy):
    return comfy


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_layer_inside_a_unit_is_recomputed_once(comfy_ready, family):
    """A unit on the gradient path (its output needs grad) runs again in backward, so every Linear inside it runs
    exactly twice; units off the path (before any LoRA) and layers outside units run once."""
    from lora_lab.lora_core.training.checkpointing import checkpoint_units

    model, inputs = FAMILIES[family]()
    model = _loaded_like_comfy(model)
    units = checkpoint_units(model)
    on_path: dict[int, bool] = {}
    calls: dict[str, int] = {}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    handles = [m.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)) for n, m in linears.items()]
    handles += [u.register_forward_hook(lambda u, a, k, out: on_path.__setitem__(
        id(u), any(t.requires_grad for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))),
        with_kwargs=True) for u in units]
    try:
        plain_grads, *_ = _forward_backward(model, inputs, checkpointing=False, guard=True)
        plain, path = dict(calls), dict(on_path)
        calls.clear()
        ckpt_grads, *_ = _forward_backward(model, inputs, checkpointing=True, guard=True)
    finally:
        for h in handles:
            h.remove()
    recomputed = {id(m) for u in units if path.get(id(u)) for m in u.modules() if m is not u}
    assert len(units) >= 2 and any(id(m) in recomputed for m in linears.values()), f"{family}: units {len(units)}"
    for n, m in linears.items():
        expected = plain.get(n, 0) * (2 if id(m) in recomputed else 1)
        assert calls.get(n, 0) == expected, f"{family}: {n} ran {calls.get(n, 0)}x, expected {expected}x"
    for n in plain_grads:
        torch.testing.assert_close(ckpt_grads[n], plain_grads[n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "wan"])
def test_checkpointing_keeps_fewer_activation_bytes(comfy_ready, family):
    """Bytes of everything autograd keeps for backward in one forward. Without checkpointing the guard is
    off (these models write no block input in place), since its inner hook would hide the saves."""
    model, inputs = FAMILIES[family]()
    model = _loaded_like_comfy(model)
    _, without, _ = _forward_backward(model, inputs, checkpointing=False, guard=False, measure_bytes=True)
    _, with_ckpt, _ = _forward_backward(model, inputs, checkpointing=True, guard=True, measure_bytes=True)
    assert with_ckpt <= 0.5 * without, f"{family}: {with_ckpt} vs {without} bytes"


def _count_linear_calls(model, units):
    calls: dict[str, int] = {}
    on_path: dict[int, bool] = {}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    handles = [m.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)) for n, m in linears.items()]
    handles += [u.register_forward_hook(lambda u, a, k, out: on_path.__setitem__(
        id(u), any(t.requires_grad for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))),
        with_kwargs=True) for u in units]
    return linears, calls, on_path, handles


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_partial_recomputes_the_planned_units_once_and_gives_the_plain_gradients(comfy_ready, family):
    """partial's plan (measured on this batch as the trainer measures its calibration batch) picks some units:
    the Linears inside those on the gradient path run exactly twice, all others once, and the gradients are
    the plain ones."""
    from lora_lab.lora_core.training.checkpoint_plan import choose, measure_units
    from lora_lab.lora_core.training.checkpointing import checkpoint_units

    model, inputs = FAMILIES[family]()
    model = _loaded_like_comfy(model)
    units = checkpoint_units(model)
    plain_grads, *_ = _forward_backward(model, inputs, checkpointing=False, guard=True)
    linears, calls, on_path, handles = _count_linear_calls(model, units)
    try:
        _forward_backward(model, inputs, checkpointing=False, guard=True)
        plain, path = dict(calls), dict(on_path)
        calls.clear()
        part_grads, _, info = _forward_backward(model, inputs, checkpointing=True, guard=True, plan_budget=0.25)
    finally:
        for h in handles:
            h.remove()
    chosen = [u for u, again in zip(units, info["recompute"]) if again]
    assert 0 < len(chosen) <= len(units), f"{family}: {info['recompute']}"
    recomputed = {id(m) for u in chosen if path.get(id(u)) for m in u.modules() if m is not u}
    inside = {id(m) for u in units for m in u.modules() if m is not u}
    for n, m in linears.items():
        # the plan's measuring pass runs each unit twice (with grad to weigh it, then for real); a unit's own
        # forward hook fires once per call of the unit however often its forward runs
        expected = plain.get(n, 0) * ((2 if id(m) in recomputed else 1) + (2 if id(m) in inside else 1))
        assert calls.get(n, 0) == expected, f"{family}: {n} ran {calls.get(n, 0)}x, expected {expected}x"
    for n in plain_grads:
        torch.testing.assert_close(part_grads[n], plain_grads[n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "wan"])
def test_partial_keeps_between_full_and_half_of_off(comfy_ready, family):
    """Bytes autograd keeps in one forward (as in test_checkpointing_keeps_fewer_activation_bytes): partial's
    plan keeps at most a quarter of what the units keep without checkpointing, so the whole forward keeps at
    most half of off, and no less than full (the two-block test transformers need both blocks recomputed to
    get there: partial is full for them). The guard stays off for partial too (these models write no block input
    in place): in the units partial keeps, its inner hook would hide their saves from the measuring one."""
    model, inputs = FAMILIES[family]()
    model = _loaded_like_comfy(model)
    _, without, _ = _forward_backward(model, inputs, checkpointing=False, guard=False, measure_bytes=True)
    _, full, _ = _forward_backward(model, inputs, checkpointing=True, guard=True, measure_bytes=True)
    _, part, _ = _forward_backward(model, inputs, checkpointing=True, guard=False, measure_bytes=True, plan_budget=0.25)
    assert full <= part <= 0.5 * without, f"{family}: full {full}, partial {part}, off {without} bytes"


def _relative_error(got: dict, want: dict) -> float:
    num = sum(float((got[n] - want[n]).pow(2).sum()) for n in want)
    return (num / sum(float(want[n].pow(2).sum()) for n in want)) ** 0.5


@pytest.mark.slow
@pytest.mark.parametrize("family,mode", [("sd15", "off"), ("sd15", "full"), ("flux", "full"), ("wan", "partial")])
def test_compiled_units_give_the_plain_gradients(comfy_ready, family, mode):
    """torch.compile (inductor, C++ on the CPU) on the units, with the frozen layers, the in-place guard, the LoRA
    hooks and checkpointing around them: the adapter gradients are the plain ones to float32 rounding
    (inductor fuses and reorders reductions). Every SD and Wan unit compiles; Flux's double blocks fall back to
    eager on the CPU (ComfyUI's CPU attention breaks the graph, and after the break the block adds in place to
    a graph input a norm saved, which AOTAutograd refuses): the fall-back must leave the gradients plain too."""
    model, inputs = FAMILIES[family]()
    model = _loaded_like_comfy(model)
    plain, *_ = _forward_backward(model, inputs, checkpointing=False, guard=True)
    kw = {"checkpointing": mode != "off", "guard": True, "plan_budget": 0.25 if mode == "partial" else None}
    compiled, _, info = _forward_backward(model, inputs, compile=True, **kw)
    assert info["compiled"].startswith("on") and " 0 graphs" not in info["report"], (info["compiled"], info["report"])
    assert ("DoubleStreamBlock eager after a failed compile" in info["compiled"]) == (family == "flux"), info["compiled"]
    assert _relative_error(compiled, plain) < 1e-4, f"{family}/{mode}: {_relative_error(compiled, plain)}"
