"""layer_kinds.is_linear: linear layers that do not subclass nn.Linear (ComfyUI's mixed-precision Linear) are
targeted, adapted and given the frozen-base formula like nn.Linear; look-alikes with another weight shape are not."""

from __future__ import annotations

import torch
from torch import nn

from lora_lab.lora_core.adapters.algorithms import new_adapter
from lora_lab.lora_core.training.frozen_layers import frozen_base, plain_fetch
from lora_lab.lora_core.adapters.layer_kinds import is_linear
from lora_lab.lora_core.adapters.targets import select_targets


class LinearLike(nn.Module):
    """In the manner of ComfyUI's MixedPrecisionOps.Linear: an nn.Module, not an nn.Linear."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5, requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(n_out), requires_grad=False)

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


def test_is_linear_takes_declared_linears_and_refuses_look_alikes():
    assert is_linear(nn.Linear(3, 4)) and is_linear(LinearLike(3, 4))
    wrong = LinearLike(3, 4)
    wrong.weight = nn.Parameter(torch.zeros(3, 4))
    assert not is_linear(wrong)
    assert not is_linear(nn.Embedding(4, 3)) and not is_linear(nn.Conv2d(3, 4, 1)) and not is_linear(nn.LayerNorm(3))


def test_linear_like_layers_are_targeted_adapted_and_back_propagate_by_formula():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.proj = LinearLike(8, 8), LinearLike(8, 8)

    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])

        def forward(self, x):
            for b in self.blocks:
                x = b.proj(torch.tanh(b.to_q(x)))
            return x

    root = Root()
    assert select_targets(root, "all_linear") == ["blocks.0.to_q", "blocks.0.proj", "blocks.1.to_q", "blocks.1.proj"]
    adapter = new_adapter(root.blocks[0].to_q, 2, 2.0, 0.0, torch.Generator().manual_seed(0))
    assert adapter.geometry.weight_shape == (8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    with frozen_base(root, plain_fetch, is_plain=lambda m: True) as stats:
        root(x).sum().backward()
    assert stats.formula_layers == 4
    xr = x.detach().clone().requires_grad_(True)
    root(xr).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
