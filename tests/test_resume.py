"""Exact resume: a run stopped (cancel, periodic save) and continued from its state file gives the same
LoRA file, byte for byte, as the run that never stopped. Also: what a resumed run refuses, previews that
leave the run untouched, and text-encoder LoRA training."""

import math

import pytest
import torch

from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
from lora_lab.lora_core.errors import TrainingCrashed, TrainingError
from lora_lab.lora_core.files.lora_file import save_lora_file
from lora_lab.lora_core.optimizers import OPTIMIZERS
from lora_lab.lora_core.cli.tiny_models import TinyTextEncoder, tiny_unet
from lora_lab.lora_core.training.state import load_train_state, save_train_state, state_path
from lora_lab.lora_core.training.trainer import TrainConfig, train
from lora_lab.lora_core.data.samples import TrainSample

from test_optimizers import _available


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=0, channels=(16, 32)).requires_grad_(False)


def make_samples(n=4, seed=1, shift=0.0):
    te, g = TinyTextEncoder(), torch.Generator().manual_seed(seed)
    return [TrainSample(torch.randn(4, 8, 8, generator=g) + shift, {"encoder_hidden_states": te(f"photo of thing {i}")},
                        f"photo of thing {i}") for i in range(n)]


def config(**kw):
    base = dict(steps=6, learning_rate=1e-3, rank=4, alpha=4.0, targets="attention_mlp", seed=0, grad_accum=2,
                dropout=0.1, lr_schedule="cosine", warmup_steps=1)
    return TrainConfig(**{**base, **kw})


def lora_bytes(result, tmp_path, name):
    path = save_lora_file(tmp_path / f"{name}.safetensors", result.lora.kohya_state_dict(), {"name": "same"})
    return path.read_bytes()


def stopped_then_resumed(backend, samples, cfg, tmp_path, stop_at=3, **train_kw):
    done = []
    first = train(backend, samples, cfg, on_step=lambda r: done.append(r.step), should_stop=lambda: len(done) >= stop_at, **train_kw)
    assert first.interrupted and first.steps_done == stop_at
    path = save_train_state(state_path(tmp_path / "run_step00003.safetensors"), first.state)
    return train(backend, samples, cfg, resume=load_train_state(path), **train_kw)


OPTIMIZER_PARAMS = [pytest.param(n, marks=pytest.mark.skipif(not _available(n), reason="package not installed")) for n in OPTIMIZERS]


@pytest.mark.parametrize("optimizer", OPTIMIZER_PARAMS)
def test_three_plus_three_equals_six_byte_for_byte(unet, tmp_path, optimizer):
    backend, samples = DDPMUNetBackend(unet), make_samples()
    cfg = config(optimizer=optimizer, learning_rate=1.0 if optimizer == "prodigy" else 1e-3,
                 lr_schedule="constant" if optimizer == "adamw_schedulefree" else "cosine")
    straight = train(backend, samples, cfg)
    resumed = stopped_then_resumed(backend, samples, cfg, tmp_path)
    assert resumed.steps_done == 6 and resumed.losses == straight.losses
    assert lora_bytes(resumed, tmp_path, "b") == lora_bytes(straight, tmp_path, "a")
    assert any(torch.count_nonzero(w.up) for w in straight.lora.modules.values())


@pytest.mark.skipif(not _available("adamw8bit"), reason="bitsandbytes not installed")
def test_adamw8bit_resume_is_exact_with_8bit_state_on_the_cpu(unet, tmp_path):
    """The tiny LoRA's tensors are under bitsandbytes' min_8bit_size (4096), so the case above keeps 32-bit
    moments; with the threshold lowered the moments are really 8-bit, and the resume is still exact."""
    backend, samples = DDPMUNetBackend(unet), make_samples()
    cfg = config(optimizer="adamw8bit", optimizer_settings={"min_8bit_size": 64})
    straight = train(backend, samples, cfg)
    resumed = stopped_then_resumed(backend, samples, cfg, tmp_path)
    quantised = [s["__bnb_optimizer_quant_state__"] for s in straight.state.optimizer["state"].values()]
    assert all(q["state1"].dtype == torch.uint8 for q in quantised)
    assert lora_bytes(resumed, tmp_path, "b") == lora_bytes(straight, tmp_path, "a")


@pytest.mark.parametrize("algorithm,extra", [("loha", {}), ("lokr", {"factor": 4}), ("dora", {}),
                                             ("lora", {"ema_decay": 0.9}),
                                             ("lora", {"timestep_sampling": "logit_normal", "timestep_min": 0.2,
                                                       "loss": __import__("lora_lab.lora_core.training.loss_options", fromlist=["x"]).LossOptions(
                                                           loss_type="huber", min_snr_gamma=5.0, noise_offset=0.05, adaptive_noise_scale=0.01)})])
def test_resume_is_exact_for_algorithms_ema_and_loss_options(unet, tmp_path, algorithm, extra):
    backend, samples = DDPMUNetBackend(unet), make_samples()
    options = {k: extra[k] for k in ("factor",) if k in extra}
    cfg = config(algorithm=algorithm, algorithm_options=options, **{k: v for k, v in extra.items() if k != "factor"})
    straight = train(backend, samples, cfg)
    resumed = stopped_then_resumed(backend, samples, cfg, tmp_path)
    assert lora_bytes(resumed, tmp_path, "b") == lora_bytes(straight, tmp_path, "a")
    if cfg.ema_decay:  # the result is the average, not the last weights
        assert straight.state.ema is not None
        live = {k.split("::")[0]: v for k, v in straight.state.adapters.items() if k.endswith("::up")}
        assert any(not torch.equal(straight.lora.modules[n].up, live[n]) for n in live)


@pytest.mark.parametrize("mode", ["full", "partial"])
def test_checkpointed_runs_resume_byte_for_byte(unet, tmp_path, mode):
    """partial's plan depends on nothing a resumed run does differently (no timings, a fixed calibration batch)."""
    backend, samples = DDPMUNetBackend(unet), make_samples()
    cfg = config(gradient_checkpointing=mode)
    straight = train(backend, samples, cfg)
    resumed = stopped_then_resumed(backend, samples, cfg, tmp_path)
    assert resumed.checkpointing == straight.checkpointing != "off"
    assert lora_bytes(resumed, tmp_path, "b") == lora_bytes(straight, tmp_path, "a")


def raise_in_step_four(error: Exception):
    """A forward pre-hook that raises `error` on the 7th forward: 2 micro-batches per step, so step 4's first."""
    calls = {"n": 0}

    def hook(module, args):
        calls["n"] += 1
        if calls["n"] == 7:
            raise error

    return hook


class HostCancel(Exception):
    pass


def test_cancel_inside_step_four_then_resume_is_exact(unet, tmp_path):
    backend, samples = DDPMUNetBackend(unet), make_samples()
    cfg = config()
    straight = train(backend, samples, cfg)
    handle = unet.conv_in.register_forward_pre_hook(raise_in_step_four(HostCancel()))
    try:
        cancelled = train(backend, samples, cfg, interrupt_on=(HostCancel,))
    finally:
        handle.remove()
    assert cancelled.interrupted and cancelled.steps_done == 3
    path = save_train_state(tmp_path / "x.state", cancelled.state)
    resumed = train(backend, samples, cfg, resume=load_train_state(path))
    assert lora_bytes(resumed, tmp_path, "b") == lora_bytes(straight, tmp_path, "a")


class Bug(KeyError):
    pass


@pytest.mark.parametrize("where", ["forward", "after_step"])
def test_a_crash_carries_the_last_completed_step_and_resumes_exactly(unet, tmp_path, where):
    """Any unexpected exception (a bug in the model's forward, a failed save after a step) -> TrainingCrashed
    with the last completed step's result; resuming from its state gives the uninterrupted run's bytes."""
    backend, samples = DDPMUNetBackend(unet), make_samples()
    cfg = config()
    straight = train(backend, samples, cfg)

    def crash_after_step_three(report):
        if report.step == 3:
            raise OSError("disk full")

    handle = unet.conv_in.register_forward_pre_hook(raise_in_step_four(Bug("boom"))) if where == "forward" else None
    try:
        with pytest.raises(TrainingCrashed) as info:
            train(backend, samples, cfg, on_step=None if handle else crash_after_step_three)
    finally:
        if handle:
            handle.remove()
    message = str(info.value)
    assert ("during step 4: Bug: 'boom'" if where == "forward" else "after step 3: OSError: disk full") in message
    crashed = info.value.result
    assert crashed.interrupted and crashed.steps_done == 3
    path = save_train_state(tmp_path / "c.state", crashed.state)
    resumed = train(backend, samples, cfg, resume=load_train_state(path))
    assert lora_bytes(resumed, tmp_path, "c") == lora_bytes(straight, tmp_path, "a")


def test_out_of_memory_after_a_step_keeps_that_step_and_advises(unet, tmp_path):
    """OOM in what runs after a step (validation, a preview, a save) is an out-of-memory error with advice, and
    the step it followed is complete: its result is carried and resumes to the uninterrupted run's bytes."""
    from lora_lab.lora_core.errors import TrainingOutOfMemory

    backend, samples = DDPMUNetBackend(unet), make_samples()
    cfg = config()
    straight = train(backend, samples, cfg)

    def preview_runs_out_of_memory(report):
        if report.step == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (simulated preview)")

    with pytest.raises(TrainingOutOfMemory) as info:
        train(backend, samples, cfg, on_step=preview_runs_out_of_memory)
    message = str(info.value)
    assert "out of memory after step 3" in message and "validation_every" in message and "batch_size" in message
    assert info.value.result.steps_done == 3
    path = save_train_state(tmp_path / "o.state", info.value.result.state)
    resumed = train(backend, samples, cfg, resume=load_train_state(path))
    assert lora_bytes(resumed, tmp_path, "o") == lora_bytes(straight, tmp_path, "a")


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory (simulated)"), OSError("bus error")],
                         ids=["oom", "other"])
def test_an_error_inside_the_optimizer_update_never_passes_a_half_updated_lora_as_a_step(unet, monkeypatch, error):
    """The update of step 4 changes one tensor, then fails: the LoRA matches no step, so no result is carried
    (nothing could be saved honestly) and the message says where it struck and why nothing is kept."""
    from lora_lab.lora_core.errors import TrainingOutOfMemory

    backend, samples = DDPMUNetBackend(unet), make_samples()
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step(self, closure=None):
        calls["n"] += 1
        if calls["n"] == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].add_(1.0)  # partly updated
            raise error
        return real_step(self, closure)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    expected = TrainingOutOfMemory if isinstance(error, torch.OutOfMemoryError) else TrainingCrashed
    with pytest.raises(expected) as info:
        train(backend, samples, config(steps=6))
    assert info.value.result is None
    assert "while updating the LoRA for step 4" in str(info.value) and "partly updated" in str(info.value)


def test_periodic_snapshot_resumes_exactly_and_previews_change_nothing(unet, tmp_path):
    backend, samples = DDPMUNetBackend(unet), make_samples()
    cfg = config()
    straight = train(backend, samples, cfg)
    snapshots, previews = {}, []

    def on_step(report):
        if report.step == 3:
            snapshots[3] = report.snapshot()
        with report.evaluating():  # what a preview does: seeds the global RNG, samples, runs the model
            torch.manual_seed(1234)
            x = torch.randn(1, 4, 8, 8)
            previews.append(backend.denoise(x, torch.tensor([3.0]), [samples[0].cond]).sum().item())
            assert not any(a.training for a in unet.modules() if hasattr(a, "scale"))

    with_previews = train(backend, samples, cfg, on_step=on_step)
    assert len(previews) == 6 and all(map(math.isfinite, previews))
    assert lora_bytes(with_previews, tmp_path, "p") == lora_bytes(straight, tmp_path, "a")
    path = save_train_state(tmp_path / "s.state", snapshots[3].state)
    resumed = train(backend, samples, cfg, resume=load_train_state(path))
    assert lora_bytes(resumed, tmp_path, "r") == lora_bytes(straight, tmp_path, "a")


def test_resume_refuses_other_data_or_settings_naming_them(unet, tmp_path):
    backend, samples = DDPMUNetBackend(unet), make_samples()
    done = []
    first = train(backend, samples, config(), on_step=lambda r: done.append(1), should_stop=lambda: len(done) >= 2)
    state = load_train_state(save_train_state(tmp_path / "x.state", first.state))
    with pytest.raises(TrainingError, match="dataset: the images, captions or their encoding"):
        train(backend, make_samples(shift=0.5), config(), resume=state)
    with pytest.raises(TrainingError, match="dataset: 4 samples in the state, 3 now"):
        train(backend, make_samples(3), config(), resume=state)
    with pytest.raises(TrainingError, match=r"learning_rate: 0\.001 in the state, 0\.002 now; rank: 4 in the state, 8 now"):
        train(backend, samples, config(learning_rate=2e-3, rank=8), resume=state)
    longer = train(backend, samples, config(steps=8, seed=99), resume=state)  # steps and seed may change
    assert longer.steps_done == 8


class TinyClipBackend(DDPMUNetBackend):
    def __init__(self, unet, text_encoder):
        super().__init__(unet)
        self.text_encoders = {"te1": text_encoder}


class EncodeEachStep:
    """A cond whose text is encoded when the step draws it, with grad (what Train LoRA does for TE LoRA)."""

    def __init__(self, encoder, ids):
        self.encoder, self.ids = encoder, ids

    def draw(self, generator):
        return {"encoder_hidden_states": self.encoder(input_ids=self.ids[None]).last_hidden_state[0]}


def test_text_encoder_lora_trains_with_its_own_lr_and_resumes(unet, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        vocab_size=100, max_position_embeddings=16)).eval().requires_grad_(False)
    backend = TinyClipBackend(unet, clip)
    g = torch.Generator().manual_seed(0)
    samples = [TrainSample(torch.randn(4, 8, 8, generator=g), EncodeEachStep(clip, torch.randint(0, 100, (16,), generator=g)),
                           f"caption {i}") for i in range(3)]
    cfg = config(train_text_encoder=True, text_encoder_lr=5e-4, dropout=0.0)
    straight = train(backend, samples, cfg)
    groups = straight.state.optimizer["param_groups"]
    assert [g["initial_lr"] for g in groups] == [1e-3, 5e-4]  # the text encoder's own learning rate
    te = {n: w for n, w in straight.lora.modules.items() if n.startswith("te1:")}
    assert te and all(torch.count_nonzero(w.up) for w in te.values())
    assert {"te1:encoder.layers.0.self_attn.q_proj", "te1:encoder.layers.1.mlp.fc2"} <= set(te)
    assert "lora_te1_encoder_layers_0_self_attn_q_proj.lora_up.weight" in straight.lora.kohya_state_dict()
    resumed = stopped_then_resumed(backend, samples, cfg, tmp_path)
    assert lora_bytes(resumed, tmp_path, "b") == lora_bytes(straight, tmp_path, "a")
    assert not any(p.requires_grad for p in clip.parameters()) and not any(m._forward_hooks for m in clip.modules())


def test_state_file_is_named_so_lora_lists_skip_it_and_earlier_names_still_resolve(tmp_path):
    """x.safetensors -> x.state: no LoRA-list extension (ComfyUI lists models/loras by extension); a state
    an earlier version wrote as x.state.safetensors is found when only it exists."""
    from lora_lab.lora_core.training.state import existing_state_path, is_state_file, state_path

    lora = tmp_path / "x_step00003.safetensors"
    assert state_path(lora) == tmp_path / "x_step00003.state"
    assert is_state_file(state_path(lora)) and is_state_file(tmp_path / "x.state.safetensors")
    assert not is_state_file(lora)
    assert existing_state_path(lora) == tmp_path / "x_step00003.state"  # neither exists: the new name
    (tmp_path / "x_step00003.state.safetensors").write_bytes(b"")
    assert existing_state_path(lora) == tmp_path / "x_step00003.state.safetensors"
    (tmp_path / "x_step00003.state").write_bytes(b"")
    assert existing_state_path(lora) == tmp_path / "x_step00003.state"
