"""min-SNR, debiased estimation, Huber/smooth-L1 schedules, noise offset and timestep sampling, checked
against independent computations: diffusers' compute_snr and the formulas of kohya's sd-scripts."""

import math

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_snr

from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend, FlowTransformerBackend
from lora_lab.lora_core.errors import TrainingError
from lora_lab.lora_core.training.loss_options import LossOptions
from lora_lab.lora_core.training.loss_weighting import loss_weight, snr
from lora_lab.lora_core.training.noise import sample_noise
from lora_lab.lora_core.training.objective import diffusion_loss
from lora_lab.lora_core.training.robust_loss import elementwise, huber_threshold
from lora_lab.lora_core.training.timesteps import TimestepOptions, sample_u, sampler, u_interval


class Schedule(DDPMUNetBackend):
    """The DDPM backend's schedule without a network (the weights only need sigma)."""

    def __init__(self, prediction="eps"):
        super().__init__(torch.nn.Linear(1, 1), prediction=prediction, device=torch.device("cpu"))


SD_SCHEDULER = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
TIMESTEPS = torch.tensor([0, 1, 10, 100, 250, 500, 750, 900, 999])


def kohya_all_snr():
    abar = SD_SCHEDULER.alphas_cumprod
    return (abar.sqrt() / (1 - abar).sqrt()) ** 2


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_matches_diffusers_and_kohya(prediction):
    backend = Schedule(prediction)
    sigma = backend.sigmas[TIMESTEPS]
    ours = loss_weight(backend, sigma, backend.c_out(sigma), LossOptions(min_snr_gamma=5.0))
    s = compute_snr(SD_SCHEDULER, TIMESTEPS)  # diffusers' train_text_to_image / kohya's apply_snr_weight
    expected = torch.minimum(s, torch.full_like(s, 5.0)) / (s if prediction == "eps" else s + 1)
    torch.testing.assert_close(snr(backend, sigma), s.float(), rtol=1e-4, atol=0)
    torch.testing.assert_close(ours, expected.float(), rtol=1e-4, atol=1e-7)


def test_debiased_matches_kohya_for_eps():
    backend = Schedule("eps")
    sigma = backend.sigmas[TIMESTEPS]
    ours = loss_weight(backend, sigma, backend.c_out(sigma), LossOptions(debiased_estimation=True))
    snr_t = torch.minimum(kohya_all_snr()[TIMESTEPS], torch.full((len(TIMESTEPS),), 1000.0))
    torch.testing.assert_close(ours, (1 / snr_t.sqrt()).float(), rtol=1e-4, atol=0)


def test_weights_hold_for_flow_models_in_sigma_terms():
    backend = FlowTransformerBackend(torch.nn.Linear(1, 1), shift=3.0, device=torch.device("cpu"))
    sigma = torch.tensor([0.1, 0.5, 0.9])
    s = ((1 - sigma) / sigma) ** 2  # x_t = (1 - sigma) x0 + sigma noise
    torch.testing.assert_close(snr(backend, sigma), s)
    ours = loss_weight(backend, sigma, backend.c_out(sigma), LossOptions(min_snr_gamma=5.0))
    torch.testing.assert_close(ours, torch.minimum(s, torch.tensor(5.0)) * sigma**2)


def kohya_huber_c(schedule, timesteps, huber_c=0.1, huber_scale=1.0):
    """sd-scripts' get_huber_threshold_if_needed, written from its formulas."""
    if schedule == "exponential":
        alpha = -math.log(huber_c) / 1000
        return torch.exp(-alpha * timesteps.float()) * huber_scale
    if schedule == "snr":
        abar = SD_SCHEDULER.alphas_cumprod[timesteps]
        sigmas = ((1.0 - abar) / abar) ** 0.5
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    return torch.full((len(timesteps),), huber_c * huber_scale)


@pytest.mark.parametrize("schedule", ["constant", "exponential", "snr"])
def test_huber_schedules_match_kohya(schedule):
    backend = Schedule()
    sigma = backend.sigmas[TIMESTEPS]
    options = LossOptions(loss_type="huber", huber_schedule=schedule, huber_c=0.1, huber_scale=1.5 if schedule != "snr" else 1.0)
    ours = huber_threshold(options, backend.timestep_fraction(sigma), snr(backend, sigma))
    torch.testing.assert_close(ours, kohya_huber_c(schedule, TIMESTEPS, 0.1, options.huber_scale).float(), rtol=1e-4, atol=1e-6)


def test_huber_and_smooth_l1_match_kohya_conditional_loss():
    pred, target = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    c = torch.tensor([0.1, 0.7])
    cc = c.view(-1, 1, 1, 1)
    huber = 2 * cc * (torch.sqrt((pred - target) ** 2 + cc**2) - cc)
    smooth = 2 * (torch.sqrt((pred - target) ** 2 + cc**2) - cc)
    torch.testing.assert_close(elementwise(pred - target, LossOptions(loss_type="huber"), c), huber)
    torch.testing.assert_close(elementwise(pred - target, LossOptions(loss_type="smooth_l1"), c), smooth)
    torch.testing.assert_close(elementwise(pred - target, LossOptions(loss_type="l1")), (pred - target).abs())


def test_huber_loss_on_the_native_residual_of_a_real_model():
    """diffusion_loss with huber equals kohya's huber on (eps_pred - eps), the network's own output."""
    from lora_lab.lora_core.cli.tiny_models import tiny_unet

    unet = tiny_unet(seed=0, channels=(16, 32)).requires_grad_(False)
    backend = DDPMUNetBackend(unet)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    conds = [{"encoder_hidden_states": torch.randn(16, 32, generator=g)} for _ in range(2)]
    u = torch.tensor([0.3, 0.8])
    options = LossOptions(loss_type="huber", huber_schedule="snr")
    with torch.no_grad():
        ours = diffusion_loss(backend, x0, noise, u, conds, options)
        sigma = backend.sigma_from_u(u)
        t = backend.timestep(sigma)
        x_t = backend.noisy(x0, noise, sigma)
        s = sigma.reshape(-1, 1, 1, 1)
        eps = unet(x_t / (1 + s**2).sqrt(), t, encoder_hidden_states=torch.stack([c["encoder_hidden_states"] for c in conds])).sample
        cc = kohya_huber_c("snr", t).float().view(-1, 1, 1, 1)
        expected = (2 * cc * (torch.sqrt((eps - noise) ** 2 + cc**2) - cc)).mean(dim=(1, 2, 3))
    torch.testing.assert_close(ours, expected, rtol=2e-4, atol=1e-6)


def test_noise_offset_is_kohyas():
    latent = torch.randn(4, 16, 16) + torch.tensor([2.0, -1.0, 0.0, 0.5]).view(4, 1, 1)
    plain = sample_noise(latent, torch.Generator().manual_seed(0), LossOptions())
    g = torch.Generator().manual_seed(0)
    offset = sample_noise(latent, g, LossOptions(noise_offset=0.1, adaptive_noise_scale=0.05))
    g2 = torch.Generator().manual_seed(0)
    base = torch.randn(latent.shape, generator=g2)
    strength = (0.1 + 0.05 * latent.mean(dim=(1, 2), keepdim=True).abs()).clamp(min=0)
    expected = base + strength * torch.randn((4, 1, 1), generator=g2)
    assert torch.equal(plain, base)
    torch.testing.assert_close(offset, expected, rtol=0, atol=0)


def test_mode_sampling_matches_diffusers():
    ours = sample_u(64, "mode", torch.Generator().manual_seed(5), options=TimestepOptions(method="mode", mode_scale=1.29))
    theirs = compute_density_for_timestep_sampling("mode", 64, mode_scale=1.29, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, theirs.clamp(1e-3, 1.0))


def test_sampling_methods_shapes_and_shift():
    for method in ("uniform", "logit_normal", "sigmoid", "shift", "mode"):
        u = sample_u(4000, method, torch.Generator().manual_seed(0), options=TimestepOptions(method=method))
        assert u.shape == (4000,) and float(u.min()) >= 1e-3 and float(u.max()) <= 1.0
    sig = sample_u(4000, "sigmoid", torch.Generator().manual_seed(0), options=TimestepOptions(method="sigmoid"))
    shifted = sample_u(4000, "shift", torch.Generator().manual_seed(0), options=TimestepOptions(method="shift", shift=3.0))
    torch.testing.assert_close(shifted, (3 * sig / (1 + 2 * sig)).clamp(1e-3, 1.0))
    with pytest.raises(TrainingError, match="unknown timestep_sampling 'cubic'"):
        sample_u(2, "cubic", torch.Generator())


def test_timestep_range_lands_on_the_models_timesteps():
    """Wan 2.2's high-noise expert trains on sigma >= 0.875 (its timestep is the shifted sigma)."""
    flow = FlowTransformerBackend(torch.nn.Linear(1, 1), shift=5.0, device=torch.device("cpu"))
    draw = sampler(flow, TimestepOptions(method="logit_normal", range_min=0.875, range_max=1.0))
    sigma = flow.sigma_from_u(draw(5000, torch.Generator().manual_seed(0)))
    assert float(sigma.min()) >= 0.875 - 1e-4 and float(sigma.max()) <= 1.0
    low = sampler(flow, TimestepOptions(method="uniform", range_min=0.0, range_max=0.875))
    assert float(flow.sigma_from_u(low(5000, torch.Generator().manual_seed(0))).max()) <= 0.875 + 1e-4
    ddpm = Schedule()
    lo, hi = u_interval(ddpm, 0.2, 0.5)
    t = ddpm.timestep(ddpm.sigma_from_u(torch.linspace(lo, hi, 50)))
    assert int(t.min()) >= 199 and int(t.max()) <= 500
    with pytest.raises(TrainingError, match="timestep range"):
        u_interval(ddpm, 0.6, 0.5)
