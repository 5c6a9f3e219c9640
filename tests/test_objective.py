"""Must-show #3: our loss == the textbook eps / v / flow loss built from diffusers' own schedulers.

Textbook side: DDPMScheduler.add_noise + get_velocity, FlowMatchEulerDiscreteScheduler.scale_noise and
the target noise - x0, with the model called the way diffusers' pipelines call it. Our side: the trainer's
objective ||D - x0||^2 / c_out^2 through the backend. They must agree to fp32 rounding.
"""

import pytest
import torch
import torch.nn.functional as F

from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend, FlowTransformerBackend
from lora_lab.lora_core.training.objective import diffusion_loss
from lora_lab.lora_core.cli.tiny_models import tiny_unet
from lora_lab.lora_core.training.timesteps import U_MIN, sample_u


def _textbook_mse(pred, target):
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_loss_matches_diffusers_scheduler(prediction):
    from diffusers import DDPMScheduler

    unet = tiny_unet(seed=3)
    backend = DDPMUNetBackend(unet, prediction=prediction)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    ehs = torch.randn(4, 16, 32, generator=g)
    t = torch.tensor([0, 17, 500, 999])
    u = t.float() / 999  # sigma_from_u picks index round(u * 999)

    with torch.no_grad():
        ours = diffusion_loss(backend, x0, noise, u, [{"encoder_hidden_states": e} for e in ehs])
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=ehs).sample
        target = noise if prediction == "eps" else sched.get_velocity(x0, noise, t)
        textbook = _textbook_mse(pred, target)
    torch.testing.assert_close(ours, textbook, rtol=2e-4, atol=1e-6)
    assert textbook.min() > 0.01  # a random model is far from the target: the comparison is not 0 == 0


def _flow_scheduler_points(shift, indices):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    timesteps = sched.timesteps[indices]
    u = torch.tensor([(1000 - i) / 1000 for i in indices])  # unshifted training sigma of that timestep
    return sched, timesteps, u


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_loss_matches_diffusers_scheduler_sana(shift):
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(0)
    model = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                   num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
                                   caption_channels=16, sample_size=8).eval()
    backend = FlowTransformerBackend(model, shift=shift)
    sched, timesteps, u = _flow_scheduler_points(shift, [0, 250, 600, 990])
    g = torch.Generator().manual_seed(1)
    x0, noise, ehs = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 6, 16, generator=g)
    with torch.no_grad():
        ours = diffusion_loss(backend, x0, noise, u, [{"encoder_hidden_states": e} for e in ehs])
        x_t = sched.scale_noise(x0, timesteps, noise)
        pred = model(x_t, encoder_hidden_states=ehs, timestep=timesteps, return_dict=False)[0]
        textbook = _textbook_mse(pred, noise - x0)
    torch.testing.assert_close(ours, textbook, rtol=2e-4, atol=1e-6)
    assert textbook.min() > 0.01


def test_flow_loss_matches_diffusers_scheduler_flux():
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                   num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
                                   guidance_embeds=True, axes_dims_rope=(2, 2, 4)).eval()
    backend = FlowTransformerBackend(model, shift=1.15, guidance=3.5)
    sched, timesteps, u = _flow_scheduler_points(1.15, [10, 400, 800])
    g = torch.Generator().manual_seed(2)
    b, c, h, w = 3, 4, 8, 6
    x0, noise = torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h, w, generator=g)
    ehs, pooled = torch.randn(b, 5, 16, generator=g), torch.randn(b, 8, generator=g)
    conds = [{"encoder_hidden_states": e, "pooled_projections": p} for e, p in zip(ehs, pooled)]
    with torch.no_grad():
        ours = diffusion_loss(backend, x0, noise, u, conds)
        pack = lambda x: FluxPipeline._pack_latents(x, b, c, h, w)
        x_t = sched.scale_noise(pack(x0), timesteps, pack(noise))
        pred = model(hidden_states=x_t, encoder_hidden_states=ehs, pooled_projections=pooled, timestep=timesteps / 1000,
                     guidance=torch.full((b,), 3.5), img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                     txt_ids=torch.zeros(5, 3), return_dict=False)[0]
        textbook = _textbook_mse(pred, pack(noise) - pack(x0))
    torch.testing.assert_close(ours, textbook, rtol=2e-4, atol=1e-6)
    assert textbook.min() > 0.01


def test_timestep_sampling_is_seeded_and_in_range():
    a = sample_u(1000, "uniform", torch.Generator().manual_seed(0))
    assert torch.equal(a, sample_u(1000, "uniform", torch.Generator().manual_seed(0)))
    assert a.min() >= U_MIN and a.max() < 1 and abs(a.mean() - 0.5) < 0.05
    ln = sample_u(4000, "logit_normal", torch.Generator().manual_seed(0), mean=1.0, std=0.5)
    logits = torch.logit(ln.clamp(1e-6, 1 - 1e-6))
    assert abs(logits.mean() - 1.0) < 0.05 and abs(logits.std() - 0.5) < 0.05
