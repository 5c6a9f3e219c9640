"""Shared by the tests that show a condition (a reference, a first frame) reaching a diffusers transformer: one
loss at fixed noise and level with random LoRAs attached, its gradient, the gradient at the transformer's output
projection, and one keyword the transformer was called with."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_lab.lora_core.adapters.algorithms import new_adapter
from lora_lab.lora_core.adapters.injection import attached
from lora_lab.lora_core.adapters.targets import select_targets
from lora_lab.lora_core.training.objective import diffusion_loss


@dataclass
class Probe:
    loss: float
    grad: torch.Tensor  # every LoRA parameter's gradient, flattened
    out_grad: torch.Tensor  # d loss / d proj_out's output: one row per token the transformer saw
    seen: torch.Tensor  # the keyword argument asked for, as the transformer received it
    noise: torch.Tensor


def random_adapters(root: torch.nn.Module) -> dict:
    """Rank-4 LoRAs on the attention layers, with random (not zero) up weights so that they have an effect."""
    g = torch.Generator().manual_seed(0)
    modules = dict(root.named_modules())
    adapters = {n: new_adapter(modules[n], 4, 4.0, 0.0, g) for n in select_targets(root, "attention")}
    for adapter in adapters.values():
        torch.nn.init.normal_(adapter.up, generator=g)
    return adapters


def probe(backend, sample, adapters: dict, keyword: str, noise_seed: int = 3, u: float = 0.6) -> Probe:
    seen = {}

    def keep(module, args, output):
        output.retain_grad()
        seen["out"] = output

    def called(module, args, kwargs):
        seen["kw"] = kwargs[keyword].clone()

    for adapter in adapters.values():
        adapter.zero_grad(set_to_none=True)
    hooks = [backend.root.proj_out.register_forward_hook(keep),
             backend.root.register_forward_pre_hook(called, with_kwargs=True)]
    try:
        with attached(backend.root, adapters):
            x0 = sample.latent[None]
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(noise_seed))
            loss = diffusion_loss(backend, x0, noise, torch.tensor([u]), [sample.cond])
            loss.mean().backward()
    finally:
        for hook in hooks:
            hook.remove()
    grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for a in adapters.values() for p in a.parameters()])
    return Probe(float(loss.detach()), grad, seen["out"].grad, seen["kw"], noise)
