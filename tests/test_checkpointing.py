"""Block wrapping: gradient checkpointing and the in-place input guard give the textbook gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_lab.lora_core.checkpointing import block_modules, gradient_checkpointing


class InplaceBlock(nn.Module):
    """Residual stream updated in place, as ComfyUI's Flux blocks do (`x += f(norm(x))`)."""

    def __init__(self, inplace=True):
        super().__init__()
        self.fc, self.fc2, self.inplace = nn.Linear(8, 8), nn.Linear(8, 8), inplace

    def forward(self, x, scale=1.0):
        h = torch.tanh(self.fc(F.layer_norm(x, (8,)))) * scale
        x = x.add_(h) if self.inplace else x + h
        h2 = self.fc2(F.layer_norm(x, (8,)))
        return x.add_(h2) if self.inplace else x + h2


class Net(nn.Module):
    def __init__(self, inplace):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([InplaceBlock(inplace) for _ in range(3)])

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, scale=0.5)
        return x


def grads(net, **wrap):
    net.zero_grad(set_to_none=True)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    with gradient_checkpointing(net, **wrap) as n:
        net(x).pow(2).sum().backward()
    assert n == (3 if any(wrap.values()) else 0)
    return [p.grad.clone() for p in net.parameters()]


def test_inplace_blocks_need_the_guard():
    with pytest.raises(RuntimeError, match="inplace operation"):
        grads(Net(inplace=True), enabled=False, guard_inplace=False)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_guard_and_checkpointing_give_reference_grads(checkpoint):
    reference = grads(Net(inplace=False), enabled=False, guard_inplace=False)
    got = grads(Net(inplace=True), enabled=checkpoint, guard_inplace=True)
    for g, r in zip(got, reference):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_checkpointing_alone_matches_and_restores():
    net = Net(inplace=False)
    reference = grads(net, enabled=False, guard_inplace=False)
    for g, r in zip(grads(net, enabled=True, guard_inplace=False), reference):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    assert block_modules(net) == list(net.blocks)
    assert all("forward" not in b.__dict__ for b in net.modules())
