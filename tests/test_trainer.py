"""Training loop on a tiny real UNet2DConditionModel (CPU)."""

import math
import re

import pytest
import torch

from lora_lab.lora_core.adapters.algorithms import adapter_from_weights
from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
from lora_lab.lora_core.errors import NonFiniteLossError, TrainingCrashed, TrainingError
from lora_lab.lora_core.adapters.injection import attached
from lora_lab.lora_core.training.objective import diffusion_loss
from lora_lab.lora_core.training.lr_schedule import make_scheduler
from lora_lab.lora_core.cli.tiny_models import TinyTextEncoder, tiny_unet
from lora_lab.lora_core.training.trainer import TrainConfig, train
from lora_lab.lora_core.data.samples import TrainSample


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=0, channels=(16, 32)).requires_grad_(False)


def make_samples(n=4, seed=1):
    te, g = TinyTextEncoder(), torch.Generator().manual_seed(seed)
    return [
        TrainSample(torch.randn(4, 8, 8, generator=g), {"encoder_hidden_states": te(f"photo of thing {i}"), "id": i}, f"photo of thing {i}")
        for i in range(n)
    ]


def config(**kw):
    base = dict(steps=3, learning_rate=1e-3, rank=4, alpha=4.0, targets="attention_mlp", seed=0)
    return TrainConfig(**{**base, **kw})


def eval_loss(backend, samples, lora=None):
    """Mean loss over the samples at fixed noise levels with fixed noise."""
    g = torch.Generator().manual_seed(123)
    x0, conds = torch.stack([s.latent for s in samples]), [s.cond for s in samples]
    modules = dict(backend.root.named_modules())
    adapters = {} if lora is None else {n: adapter_from_weights(modules[n], w) for n, w in lora.modules.items()}
    total = 0.0
    with torch.no_grad(), attached(backend.root, adapters):
        for u in (0.2, 0.4, 0.6, 0.8):
            noise = torch.randn(x0.shape, generator=g)
            total += float(diffusion_loss(backend, x0, noise, torch.full((len(samples),), u), conds).mean())
    return total / 4


def assert_same_lora(a, b, atol=0.0):
    assert a.modules.keys() == b.modules.keys()
    for name in a.modules:
        for field in ("down", "up"):
            torch.testing.assert_close(getattr(a.modules[name], field), getattr(b.modules[name], field), rtol=0, atol=atol)


def test_it_learns(unet):
    backend, samples = DDPMUNetBackend(unet), make_samples()
    before = eval_loss(backend, samples)
    result = train(backend, samples, config(steps=60, learning_rate=5e-3, rank=8, alpha=8.0, batch_size=2, targets="all_linear_conv"))
    after = eval_loss(backend, samples, result.lora)
    print(f"eval loss before {before:.4f} after {after:.4f}")
    assert after < 0.8 * before
    assert len(result.losses) == 60 and result.steps_done == 60 and not result.interrupted
    assert eval_loss(backend, samples) == before  # adapters detached: the shared model is unchanged


def test_model_left_untouched(unet):
    unet.conv_in.weight.requires_grad_(True)  # a param that needs grad must get it back after training
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    train(DDPMUNetBackend(unet), make_samples(), config(gradient_checkpointing=True))
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in state.items())
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in unet.modules())
    assert unet.conv_in.weight.requires_grad and unet.conv_in.weight.grad is None
    assert not unet.conv_out.weight.requires_grad  # others keep their flag
    unet.conv_in.weight.requires_grad_(False)


class RecordingBackend(DDPMUNetBackend):
    """Records every (x0, conds) pair the objective hands to the model."""

    def __init__(self, unet):
        super().__init__(unet)
        self.calls = []

    def noisy(self, x0, noise, sigma):
        self._x0 = x0
        return super().noisy(x0, noise, sigma)

    def denoise(self, x_t, sigma, conds):
        self.calls.append((self._x0.clone(), list(conds)))
        return super().denoise(x_t, sigma, conds)


def test_captions_stay_paired_and_epochs_shuffle(unet):
    samples = make_samples(4)
    backend = RecordingBackend(unet)
    seen_ehs = []
    handle = unet.register_forward_pre_hook(lambda m, a, kw: seen_ehs.append(kw["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        train(backend, samples, config(steps=4, batch_size=2))
    finally:
        handle.remove()
    assert len(backend.calls) == 4 and len(seen_ehs) == 4
    for (x0, conds), ehs in zip(backend.calls, seen_ehs):
        assert x0.shape[0] == 2 and len(conds) == 2 and ehs.shape[0] == 2  # 2 samples per model call, no B^2
        for i, cond in enumerate(conds):
            assert torch.equal(x0[i], samples[cond["id"]].latent)  # latent i with ITS caption
            assert torch.equal(ehs[i], cond["encoder_hidden_states"])
    ids = [c["id"] for _, conds in backend.calls for c in conds]
    assert sorted(ids[:4]) == [0, 1, 2, 3] and sorted(ids[4:]) == [0, 1, 2, 3]  # each epoch sees every sample once
    assert ids[:4] != ids[4:] or ids[:4] != [0, 1, 2, 3]  # shuffled (seeded permutation)


def test_nan_stops_with_last_good_result(unet):
    backend = DDPMUNetBackend(unet)
    for bad in range(4):
        samples = make_samples(4)
        samples[bad].latent[0, 0, 0] = float("nan")
        with pytest.raises(NonFiniteLossError, match=r"loss became nan at step (\d+)") as info:
            train(backend, samples, config(steps=8))
        step = int(re.search(r"step (\d+)", str(info.value)).group(1))
        if step >= 2:
            break
    assert step >= 2, "the NaN sample was always drawn first; cannot check the last good state"
    last_good = info.value.result
    assert last_good.steps_done == step - 1 and len(last_good.losses) == step - 1 and all(map(math.isfinite, last_good.losses))
    clean = train(backend, make_samples(4), config(steps=step - 1))  # same seed, same draws up to the NaN
    assert_same_lora(last_good.lora, clean.lora)
    assert last_good.losses == clean.losses


def test_grad_accumulation_equals_bigger_batch(unet, monkeypatch):
    from lora_lab.lora_core.training.run import Run

    grads, step = [], Run._clip_and_step

    def spy(run, *rest):  # the accumulated gradient the optimizer is about to use
        grads.append([p.grad.clone() for p in run.params])
        return step(run, *rest)

    monkeypatch.setattr(Run, "_clip_and_step", spy)
    backend, samples = DDPMUNetBackend(unet), make_samples(4)
    big = train(backend, samples, config(batch_size=2, grad_accum=1))
    accum = train(backend, samples, config(batch_size=1, grad_accum=2))
    for g_big, g_acc in zip(grads[0], grads[3]):  # first step of each run (Adam would hide a scale error)
        torch.testing.assert_close(g_acc, g_big, rtol=1e-4, atol=1e-7)
    assert_same_lora(big.lora, accum.lora, atol=1e-5)
    assert big.losses == pytest.approx(accum.losses, rel=1e-5)


def _count_calls(unet, kind=torch.nn.Linear):
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in unet.modules() if isinstance(m, kind)]
    return calls, handles


@pytest.mark.parametrize("guard", [False, True])
def test_gradient_checkpointing_recomputes_and_gives_same_result(unet, guard):
    """Recomputation is counted (the node always runs with the in-place guard on), then results compared."""
    backend, samples = DDPMUNetBackend(unet), make_samples(4)
    calls, handles = _count_calls(unet)
    try:
        plain = train(backend, samples, config(batch_size=2, dropout=0.1, guard_inplace=guard))
        plain_calls = len(calls)
        calls.clear()
        ckpt = train(backend, samples, config(batch_size=2, dropout=0.1, gradient_checkpointing=True, guard_inplace=guard))
    finally:
        for h in handles:
            h.remove()
    # nearly every linear layer sits inside a checkpointed block and runs again in backward
    assert len(calls) >= 1.8 * plain_calls
    assert_same_lora(plain.lora, ckpt.lora, atol=1e-5)  # dropout RNG is replayed in recomputation


def test_partial_checkpointing_gives_the_same_lora_as_the_plain_run(unet):
    """partial recomputes some units (chosen on a calibration forward that draws from no RNG of the run)."""
    backend, samples = DDPMUNetBackend(unet), make_samples(4)
    plain = train(backend, samples, config(batch_size=2, dropout=0.1))
    part = train(backend, samples, config(batch_size=2, dropout=0.1, gradient_checkpointing="partial"))
    assert part.checkpointing.startswith("partial (") and part.losses == pytest.approx(plain.losses, rel=1e-6)
    assert_same_lora(plain.lora, part.lora, atol=1e-5)


def test_gradient_clipping_changes_update(unet):
    backend, samples = DDPMUNetBackend(unet), make_samples(4)
    loose = train(backend, samples, config(steps=2, learning_rate=1e-2, max_grad_norm=None))
    tight = train(backend, samples, config(steps=2, learning_rate=1e-2, max_grad_norm=1e-4))
    assert loose.losses[0] == tight.losses[0]
    with pytest.raises(AssertionError):
        assert_same_lora(loose.lora, tight.lora, atol=1e-7)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_runs(unet, precision):
    try:
        with torch.autocast("cpu", dtype=torch.float16 if precision == "fp16" else torch.bfloat16):
            torch.nn.Linear(2, 2)(torch.ones(1, 2))
    except RuntimeError as e:
        pytest.skip(f"this torch cannot autocast {precision} on CPU: {e}")
    result = train(DDPMUNetBackend(unet), make_samples(4), config(steps=3, precision=precision))
    assert all(map(math.isfinite, result.losses))
    assert result.compute_dtype == precision
    assert bool(result.state.scaler) == (precision == "fp16")  # loss scaling (a live GradScaler) for fp16 only
    weights = next(iter(result.lora.modules.values()))
    assert weights.down.dtype == torch.float32 and torch.count_nonzero(weights.up) > 0  # fp32 master weights moved


def test_should_stop_and_on_step(unet):
    seen = []
    result = train(DDPMUNetBackend(unet), make_samples(4), config(steps=10),
                   on_step=lambda r: seen.append((r.step, r.total, r.lr)), should_stop=lambda: len(seen) >= 2)
    assert result.interrupted and result.steps_done == 2 and seen == [(1, 10, 1e-3), (2, 10, 1e-3)]


class HostCancel(Exception):
    """Stands for ComfyUI's InterruptProcessingException, raised from inside a layer's forward."""


def test_cancel_raised_inside_the_forward_keeps_the_last_completed_step(unet):
    backend = DDPMUNetBackend(unet)
    calls = {"n": 0}

    def cancel_on_third_call(module, args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise HostCancel()

    handle = unet.conv_in.register_forward_pre_hook(cancel_on_third_call)
    try:
        partial = train(backend, make_samples(4), config(steps=8), interrupt_on=(HostCancel,))
    finally:
        handle.remove()
    assert partial.interrupted and partial.steps_done == 2
    clean = train(backend, make_samples(4), config(steps=2))
    assert_same_lora(partial.lora, clean.lora)
    # not listed in interrupt_on: a crash, raised as TrainingCrashed (with the last completed step) from it
    with pytest.raises(TrainingCrashed, match="during step 1: HostCancel") as info:
        handle = unet.conv_in.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(HostCancel()))
        try:
            train(backend, make_samples(4), config(steps=2))
        finally:
            handle.remove()
    assert isinstance(info.value.__cause__, HostCancel) and info.value.result.steps_done == 0


def test_bad_config_is_named(unet):
    with pytest.raises(TrainingError, match="batch_size"):
        train(DDPMUNetBackend(unet), make_samples(2), config(batch_size=0))
    with pytest.raises(TrainingError, match="lr_schedule"):
        train(DDPMUNetBackend(unet), make_samples(2), config(lr_schedule="wobbly"))
    with pytest.raises(TrainingError, match="no training samples"):
        train(DDPMUNetBackend(unet), [], config())
    with pytest.raises(TrainingError, match="lacks .*denoise"):
        train(unet, make_samples(2), config())


def test_lr_schedules():
    def lrs(name, warmup, total=10):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, out = make_scheduler(opt, name, warmup, total), []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("constant", 0) == [1.0] * 10
    assert lrs("constant_with_warmup", 4)[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    cos = lrs("cosine", 2)
    assert cos[:3] == [0.0, 0.5, 1.0] and cos[3] < 1.0 and cos[-1] < 0.1
    lin = lrs("linear", 0)
    assert lin[0] == 1.0 and lin[5] == pytest.approx(0.5)


def test_runs_inside_inference_mode_with_inference_tensors(unet):
    """ComfyUI executes nodes under torch.inference_mode(); latents/conds arrive as inference tensors."""
    with torch.inference_mode():
        samples = make_samples(4)
        for s in samples:
            s.latent = s.latent * 1.0
            s.cond["encoder_hidden_states"] = s.cond["encoder_hidden_states"] * 1.0
        assert samples[0].latent.is_inference()
        backend = DDPMUNetBackend(unet)
        stack = backend.denoise.__func__

        def denoise_without_copy(x_t, sigma, conds):  # hand the cond tensors to the model as they are
            assert not any(c["encoder_hidden_states"].is_inference() for c in conds)
            return stack(backend, x_t, sigma, conds)

        backend.denoise = denoise_without_copy
        result = train(backend, samples, config(steps=2, batch_size=2))
    assert result.steps_done == 2 and all(map(math.isfinite, result.losses))
    assert any(torch.count_nonzero(w.up) for w in result.lora.modules.values())


@pytest.mark.parametrize("family", ["sana", "flux"])
def test_flow_backends_train(family):
    from diffusers import FluxTransformer2DModel, SanaTransformer2DModel

    from lora_lab.lora_core.cli.diffusers_backend import FlowTransformerBackend

    torch.manual_seed(0)
    if family == "sana":
        model = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                       num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
                                       caption_channels=16, sample_size=8)
    else:
        model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                       num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
                                       guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    samples = [TrainSample(torch.randn(4, 8, 8, generator=g),
                           {"encoder_hidden_states": torch.randn(5, 16, generator=g), "pooled_projections": torch.randn(8, generator=g)})
               for _ in range(3)]
    backend = FlowTransformerBackend(model, shift=3.0)
    cfg = config(steps=3, batch_size=2, targets="attention_mlp", timestep_sampling="logit_normal", gradient_checkpointing=True)
    a, b = train(backend, samples, cfg), train(backend, samples, cfg)
    assert all(map(math.isfinite, a.losses)) and a.losses == b.losses
    assert any(torch.count_nonzero(w.up) for w in a.lora.modules.values())
    assert any(".ff." in n or "proj_mlp" in n for n in a.lora.modules)  # MLP layers were trained too


def test_a_model_that_computes_in_fp16_gets_loss_scaling_without_autocast(unet):
    """No autocast asked for (precision fp32), but the model's own dtype is fp16: the gradients are fp16 and need
    loss scaling, and the metadata must say fp16 ran."""

    class Fp16Backend(DDPMUNetBackend):
        compute_dtype = torch.float16

    result = train(Fp16Backend(unet), make_samples(2), config(steps=2, precision="fp32"))
    assert result.compute_dtype == "fp16" and result.state.scaler  # a live GradScaler's state
    plain = train(DDPMUNetBackend(unet), make_samples(2), config(steps=2, precision="fp32"))
    assert plain.compute_dtype == "fp32" and not plain.state.scaler


@pytest.mark.parametrize("algorithm", ["lora", "loha", "lokr", "dora"])
def test_memory_plan_counts_the_adapters_the_run_will_have(unet, algorithm):
    """adapter_parameter_count (for the memory plan, nothing allocated) equals the real adapters' size."""
    from lora_lab.lora_core.training.memory_estimate import adapter_parameter_count
    from lora_lab.lora_core.training.run_setup import make_adapters

    backend, cfg = DDPMUNetBackend(unet), config(algorithm=algorithm)
    counted = adapter_parameter_count(backend, cfg)
    real = sum(p.numel() for a in make_adapters(backend, cfg, torch.Generator().manual_seed(0)).values()
               for p in a.parameters())
    assert counted == real


def test_memory_plan_counts_each_checkpointing_mode():
    from lora_lab.lora_core.training.memory_estimate import activation_factor, training_memory

    off, part, full = (activation_factor(m) for m in ("off", "partial", "full"))
    assert off > part > full and (activation_factor(True), activation_factor(False)) == (full, off)
    assert activation_factor("partial", budget=0.0) == full and activation_factor("partial", budget=1.0) == off
    assert training_memory(1e6, "partial", 0) < training_memory(1e6, "partial", 0, budget=0.5) < training_memory(1e6, "off", 0)


class _FlatDenoiser(torch.nn.Module):
    """A denoiser without a block list: an architecture gradient checkpointing finds nothing to wrap in."""

    def __init__(self):
        super().__init__()
        self.to_q = torch.nn.Linear(4, 4)

    def forward(self, x, t, encoder_hidden_states=None):
        from types import SimpleNamespace

        return SimpleNamespace(sample=self.to_q(x.movedim(1, -1)).movedim(-1, 1))


def test_checkpointing_says_what_it_did(unet, caplog):
    from lora_lab.lora_core.training.checkpointing import checkpoint_units
    from lora_lab.lora_core.files.lora_file import training_metadata

    flat = train(DDPMUNetBackend(_FlatDenoiser().requires_grad_(False)), make_samples(2),
                 config(steps=1, targets=["to_q"], gradient_checkpointing=True))
    assert flat.checkpointing == "requested, but no block was found to wrap"
    assert len(flat.warnings) == 1 and "checkpointing wrapped nothing" in flat.warnings[0]
    assert "checkpointing wrapped nothing" in caplog.text and "_FlatDenoiser" in caplog.text
    meta = training_metadata(family="x", rank=4, alpha=4, learning_rate=1e-3, max_steps=1, steps_done=1,
                             num_images=2, gradient_checkpointing=flat.checkpointing)
    assert meta["ss_gradient_checkpointing"] == "False" and meta["lora_lab_gradient_checkpointing"] == flat.checkpointing

    units = len(checkpoint_units(unet))
    on = train(DDPMUNetBackend(unet), make_samples(2), config(steps=1, gradient_checkpointing=True))  # legacy true
    assert on.checkpointing == f"full ({units} units)" and on.warnings == []
    assert train(DDPMUNetBackend(unet), make_samples(2), config(steps=1)).checkpointing == "off"
    part = train(DDPMUNetBackend(unet), make_samples(2), config(steps=1, gradient_checkpointing="partial"))
    found = re.fullmatch(rf"partial \((\d+) of {units} units recomputed, (\d+)% of activations kept\)", part.checkpointing)
    assert found and 0 < int(found[1]) < units and int(found[2]) <= 25, part.checkpointing
    meta = training_metadata(family="x", rank=4, alpha=4, learning_rate=1e-3, max_steps=1, steps_done=1,
                             num_images=2, gradient_checkpointing=part.checkpointing)
    assert meta["ss_gradient_checkpointing"] == "True" and meta["lora_lab_gradient_checkpointing"] == part.checkpointing
