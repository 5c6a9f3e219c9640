"""Two experts in one run (lora_core/training/experts.py) on tiny flow models (CPU): the steps each expert gets
follow the boundary on the sampled sigmas, the order the steps run in changes nothing learnt, a stopped run
continues byte for byte, and experts that sample noise differently are refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lora_lab.lora_core.data.samples import TrainSample
from lora_lab.lora_core.errors import TrainingError
from lora_lab.lora_core.training import experts
from lora_lab.lora_core.training.experts import (EXPERTS, RoutedBackend, Switcher, draw_schedule, execution_order,
                                                 train_experts)
from lora_lab.lora_core.training.objective import diffusion_loss
from lora_lab.lora_core.training.trainer import TrainConfig


class _Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.self_attn = nn.Module()
        self.self_attn.q, self.self_attn.o = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h):
        h = h + self.self_attn.o(torch.tanh(self.self_attn.q(h)))
        return h + self.ffn(h)


class TinyVideoModel(nn.Module):
    """Channels-last linear blocks over (B, C, T, H, W) latents, with a sigma and a caption embedding added."""

    def __init__(self, seed: int, channels: int = 4, dim: int = 16):
        super().__init__()
        torch.manual_seed(seed)
        self.proj_in, self.proj_out = nn.Linear(channels, dim), nn.Linear(dim, channels)
        self.blocks = nn.ModuleList([_Block(dim), _Block(dim)])
        self.requires_grad_(False)

    def forward(self, x, sigma, cond):
        h = self.proj_in(x.movedim(1, -1)) + sigma.reshape(-1, 1, 1, 1, 1) + cond.reshape(-1, 1, 1, 1, cond.shape[-1])
        for block in self.blocks:
            h = block(h)
        return self.proj_out(h).movedim(-1, 1)


class TinyFlow:
    """A flow Backend as ComfyUI's Wan has it: sigma = shift u / (1 + (shift - 1) u), timestep = sigma."""

    prediction = "flow"
    device = torch.device("cpu")

    def __init__(self, root: nn.Module, shift: float = 5.0):
        self.root, self.shift, self.calls = root, shift, []

    def sigma_from_u(self, u):
        u = u.float()
        return self.shift * u / (1 + (self.shift - 1) * u)

    def timestep_fraction(self, sigma):
        return sigma.float()

    def noisy(self, x0, noise, sigma):
        s = sigma.reshape(-1, *[1] * (x0.dim() - 1))
        return (1 - s) * x0 + s * noise

    def denoise(self, x_t, sigma, conds):
        self.calls.append(sigma.detach().clone())
        v = self.root(x_t, sigma, torch.stack([c["emb"] for c in conds]))
        return x_t - sigma.reshape(-1, *[1] * (x_t.dim() - 1)) * v

    def c_out(self, sigma):
        return -sigma.float()


def samples(n: int = 4) -> list[TrainSample]:
    g = torch.Generator().manual_seed(7)
    return [TrainSample(torch.randn(4, 3, 4, 4, generator=g), {"emb": torch.randn(16, generator=g)}, f"clip {i}")
            for i in range(n)]


def backends(shift_low: float = 5.0) -> dict[str, TinyFlow]:
    return {EXPERTS[0]: TinyFlow(TinyVideoModel(1)), EXPERTS[1]: TinyFlow(TinyVideoModel(2), shift=shift_low)}


def config(**kw) -> TrainConfig:
    base = dict(steps=24, learning_rate=3e-3, rank=4, alpha=4.0, targets="attention_mlp", seed=3,
                timestep_sampling="logit_normal")
    return TrainConfig(**{**base, **kw})


def same_weights(a, b) -> bool:
    return a.modules.keys() == b.modules.keys() and all(
        torch.equal(getattr(a.modules[n], f), getattr(b.modules[n], f)) for n in a.modules for f in ("down", "up"))


def test_each_step_goes_to_the_expert_of_its_sampled_sigma():
    models, boundary = backends(), 0.875
    result = train_experts(models, samples(), config(steps=300, learning_rate=1e-4), boundary)
    sigmas = {name: torch.cat(b.calls) for name, b in models.items()}
    assert bool((sigmas[EXPERTS[0]] >= boundary).all()) and bool((sigmas[EXPERTS[1]] < boundary).all())
    high = result.experts.count(EXPERTS[0])
    assert high + result.experts.count(EXPERTS[1]) == 300 == result.steps_done
    assert [len(result.results[n].losses) for n in EXPERTS] == [high, 300 - high]
    # the share of steps is the probability of sigma >= boundary under logit-normal u with shift 5
    u_b = boundary / (5.0 - 4.0 * boundary)
    p = 0.5 * math.erfc(math.log(u_b / (1 - u_b)) / math.sqrt(2))
    assert abs(high - 300 * p) < 4 * math.sqrt(300 * p * (1 - p)), (high, 300 * p)


def test_batch_samples_share_their_step_side():
    models = backends()
    schedule = draw_schedule(models[EXPERTS[0]], config(batch_size=2, grad_accum=2), 0.9, 50)
    for name, u in zip(schedule.experts, schedule.u):
        sigma = models[EXPERTS[0]].sigma_from_u(u)
        assert len(u) == 4 and bool(((sigma >= 0.9) == (name == EXPERTS[0])).all())


def test_execution_order_switches_once_per_window_at_most():
    g = torch.Generator().manual_seed(0)
    names = [EXPERTS[int(x)] for x in torch.randint(0, 2, (200,), generator=g)]
    order = execution_order(names, 32)
    assert sorted(order) == list(range(200))
    for name in EXPERTS:  # each expert's own steps keep their order
        own = [i for i in order if names[i] == name]
        assert own == sorted(own)
    switches = sum(names[a] != names[b] for a, b in zip(order, order[1:]))
    assert switches <= math.ceil(200 / 32) and sum(a != b for a, b in zip(names, names[1:])) > 3 * switches


@pytest.mark.parametrize("kw", [{}, {"dropout": 0.1, "batch_size": 2, "lr_schedule": "cosine"}])
def test_order_of_steps_changes_nothing_learnt(monkeypatch, kw):
    monkeypatch.setattr(experts, "SWITCH_WINDOW", 1)  # the schedule's own order: switches whenever it does
    interleaved = train_experts(backends(), samples(), config(**kw), 0.875)
    monkeypatch.setattr(experts, "SWITCH_WINDOW", 1000)  # all of one expert, then the other: one switch
    grouped = train_experts(backends(), samples(), config(**kw), 0.875)
    assert grouped.switches == 1 < interleaved.switches
    for name in EXPERTS:
        assert same_weights(interleaved.results[name].lora, grouped.results[name].lora)
        assert interleaved.results[name].losses == grouped.results[name].losses


def test_a_stopped_run_continues_byte_for_byte(monkeypatch):
    monkeypatch.setattr(experts, "SWITCH_WINDOW", 4)
    cfg = config(dropout=0.1, batch_size=2, lr_schedule="cosine", ema_decay=0.9)
    whole = train_experts(backends(), samples(), cfg, 0.875)
    calls = iter(range(1000))
    part = train_experts(backends(), samples(), cfg, 0.875, should_stop=lambda: next(calls) == 11)
    assert part.interrupted and part.steps_done == 11
    states = {n: r.state for n, r in part.results.items()}
    rest = train_experts(backends(), samples(), cfg, 0.875, resume=states)
    assert rest.experts == whole.experts and rest.losses == whole.losses
    for name in EXPERTS:
        assert same_weights(rest.results[name].lora, whole.results[name].lora)
        assert rest.results[name].losses == whole.results[name].losses


def test_experts_that_sample_noise_differently_are_refused():
    with pytest.raises(TrainingError, match="different sigmas"):
        train_experts(backends(shift_low=3.0), samples(), config(steps=2), 0.875)


def test_a_state_of_one_expert_does_not_resume_the_other():
    part = train_experts(backends(), samples(), config(steps=4), 0.875)
    swapped = {EXPERTS[0]: part.results[EXPERTS[1]].state, EXPERTS[1]: part.results[EXPERTS[0]].state}
    with pytest.raises(TrainingError, match="expert"):
        train_experts(backends(), samples(), config(steps=6), 0.875, resume=swapped)


def test_routed_backend_gives_each_row_to_its_expert():
    models = backends()
    routed = RoutedBackend(models, 0.875, Switcher(None))
    data = samples()
    x0 = torch.stack([s.latent for s in data])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    u = torch.tensor([0.2, 0.95, 0.5, 0.99])
    conds = [s.cond for s in data]
    with torch.no_grad():
        both = diffusion_loss(routed, x0, noise, u, conds)
        for i in range(4):
            sigma = models[EXPERTS[0]].sigma_from_u(u[i:i + 1])
            own = models[EXPERTS[0] if float(sigma) >= 0.875 else EXPERTS[1]]
            assert torch.equal(diffusion_loss(own, x0[i:i + 1], noise[i:i + 1], u[i:i + 1], conds[i:i + 1]), both[i:i + 1])
