"""Gradient checkpointing recomputes (counted), keeps fewer activations (measured in bytes), and gives the
textbook gradients, also for blocks that write their input in place and for UNet-style containers whose
layers are called one by one."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_lab.lora_core.training.checkpointing import checkpoint_units, gradient_checkpointing


class InplaceBlock(nn.Module):
    """Residual stream updated in place, as ComfyUI's Flux blocks do (`x += f(norm(x))`)."""

    def __init__(self, inplace=True, width=8):
        super().__init__()
        self.fc, self.fc2, self.inplace, self.width = nn.Linear(width, width), nn.Linear(width, width), inplace, width

    def forward(self, x, scale=1.0):
        h = torch.tanh(self.fc(F.layer_norm(x, (self.width,)))) * scale
        x = x.add_(h) if self.inplace else x + h
        h2 = self.fc2(F.layer_norm(x, (self.width,)))
        return x.add_(h2) if self.inplace else x + h2


class Net(nn.Module):
    def __init__(self, inplace, width=8, depth=3):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(width, width)
        self.blocks = nn.ModuleList([InplaceBlock(inplace, width) for _ in range(depth)])

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, scale=0.5)
        return x


class CountingLinear(nn.Linear):
    calls = 0

    def forward(self, x):
        CountingLinear.calls += 1
        return super().forward(x)


class UNetLike(nn.Module):
    """Blocks are Sequential containers whose layers the model calls itself (ComfyUI's forward_timestep_embed)."""

    def __init__(self, width=8):
        super().__init__()
        torch.manual_seed(0)
        self.input_blocks = nn.ModuleList([
            nn.Sequential(CountingLinear(width, width), nn.Tanh(), CountingLinear(width, width)) for _ in range(2)])
        self.middle_block = nn.Sequential(CountingLinear(width, width))

    def forward(self, x):
        for block in [*self.input_blocks, self.middle_block]:
            for layer in block:  # never block(x)
                x = layer(x)
        return x


def _leaf_calls(net):
    calls = []
    for m in net.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(lambda *_: calls.append(1))
    return calls


def grads(net, **wrap):
    net.zero_grad(set_to_none=True)
    x = torch.randn(4, net.stem.in_features if hasattr(net, "stem") else 8, generator=torch.Generator().manual_seed(1))
    with gradient_checkpointing(net, **wrap):
        net(x).pow(2).sum().backward()
    return [p.grad.clone() for p in net.parameters()]


def test_inplace_blocks_need_the_guard():
    with pytest.raises(RuntimeError, match="inplace operation"):
        grads(Net(inplace=True), enabled=False, guard_inplace=False)


@pytest.mark.parametrize("guard", [False, True])
def test_checkpointing_recomputes_every_block_once(guard):
    """The property itself: each block layer runs once more in backward (the old guard stopped this)."""
    net = Net(inplace=guard)
    calls = _leaf_calls(net)
    grads(net, enabled=False, guard_inplace=guard)
    plain = len(calls)
    calls.clear()
    grads(net, enabled=True, guard_inplace=guard)
    assert plain == 1 + 2 * 3
    assert len(calls) == plain + 2 * 3  # stem once; 6 block layers forward + 6 recomputed


def test_sequential_units_are_their_children_and_recompute():
    net = UNetLike()
    units = checkpoint_units(net)
    assert units == [net.input_blocks[0][0], net.input_blocks[0][2], net.input_blocks[1][0], net.input_blocks[1][2],
                     net.middle_block[0]]
    CountingLinear.calls = 0
    net(torch.randn(2, 8)).sum().backward()
    assert CountingLinear.calls == 5
    CountingLinear.calls = 0
    with gradient_checkpointing(net, enabled=True):
        net(torch.randn(2, 8)).sum().backward()
    assert CountingLinear.calls == 10


def _saved_bytes(net, x, **wrap) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with gradient_checkpointing(net, **wrap), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    out.pow(2).sum().backward()
    return sum(storages.values())


@pytest.mark.parametrize("guard", [False, True])
def test_checkpointing_keeps_only_block_inputs(guard):
    """Saved-tensor bytes of one forward. The guard's own hook hides the saves of an unchecked in-place
    block from an outer hook, so "without" is measured on the out-of-place twin (same tensors saved)."""
    x = torch.randn(64, 256)
    without = _saved_bytes(Net(inplace=False, width=256, depth=6), x.clone(), enabled=False, guard_inplace=False)
    with_ckpt = _saved_bytes(Net(inplace=guard, width=256, depth=6), x.clone(), enabled=True, guard_inplace=guard)
    block_input = 64 * 256 * 4
    # without: several activations per block (norm inputs, tanh output, ...) plus the weights
    assert without > 6 * 3 * block_input
    # with: the stem's saved tensors plus one input per block (its clone under the guard is not kept)
    assert with_ckpt <= without * 0.45
    assert with_ckpt <= 256 * 256 * 4 + 64 * 256 * 4 + 6 * block_input + 6 * 64


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
    assert checkpoint_units(net) == list(net.blocks)
    assert all("forward" not in b.__dict__ for b in net.modules())


def test_parameters_inside_a_unit_get_grads_when_no_input_needs_grad():
    """The first block before any trainable layer: its own parameters still learn under checkpointing."""
    net = Net(inplace=False)
    net.stem.requires_grad_(False)
    x = torch.randn(4, 8)
    with gradient_checkpointing(net, enabled=True):
        net(x).pow(2).sum().backward()
    assert net.blocks[0].fc.weight.grad is not None and net.blocks[0].fc.weight.grad.abs().sum() > 0


def test_tensors_handed_to_a_block_inside_a_dataclass_carry_gradient():
    """Chroma and Flux 2 hand their blocks modulation tensors in a dataclass (ModulationOut); with a LoRA on the
    layers that make them, those tensors need grad. Every block is still recomputed once, the gradient that
    reaches the modulation layer is the plain one, and the caller's dataclass is left as it was."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Modulation:
        scale: torch.Tensor
        label: str = "m"

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = CountingLinear(8, 8)

        def forward(self, x, mods):
            return x + self.lin(x) * mods[0].scale

    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.mod = nn.Linear(8, 8)
            self.blocks = nn.ModuleList([Block(), Block(), Block()])

        def forward(self, x, t):
            mods = (Modulation(torch.tanh(self.mod(t))),)
            for block in self.blocks:
                x = block(x, mods)
            self.seen = mods[0]
            return x

    torch.manual_seed(0)
    net, x, t = Root(), torch.randn(2, 8), torch.randn(2, 8)
    CountingLinear.calls = 0
    net(x, t).square().sum().backward()
    reference, plain_calls = net.mod.weight.grad.clone(), CountingLinear.calls
    net.zero_grad()
    CountingLinear.calls = 0
    with gradient_checkpointing(net, True, guard_inplace=True):
        net(x, t).square().sum().backward()
    torch.testing.assert_close(net.mod.weight.grad, reference)
    assert plain_calls == 3 and CountingLinear.calls == 2 * plain_calls  # each block once more in backward
    assert net.seen.scale.grad_fn is not None and "Checkpoint" not in type(net.seen.scale.grad_fn).__name__


# --- partial checkpointing: the plan (checkpoint_plan.py) ----------------------------------------------------

def test_choose_takes_the_most_memory_per_unit_of_cost_until_the_budget_holds():
    from lora_lab.lora_core.training.checkpoint_plan import UnitCost, choose, kept_share

    records = [UnitCost(kept=100, weight_bytes=10, calls=1),    # 10 bytes kept per unit of cost
               UnitCost(kept=100, weight_bytes=1000, calls=1),  # 0.1
               UnitCost(kept=50, weight_bytes=10, calls=1),     # 5
               UnitCost(kept=0, weight_bytes=1, calls=1)]       # keeps nothing: never worth recomputing
    assert choose(records, 0.5, "cpu") == [True, False, True, False]
    assert kept_share(records, [True, False, True, False]) == 100 / 250
    assert choose(records, 1.0, "cpu") == [False] * 4
    assert choose(records, 0.0, "cpu") == [True, True, True, False]
    # FLOPs count at the device's balance: on a GPU the products are cheap next to their weights' bytes
    heavy = [UnitCost(kept=100, flops=10_000, calls=1), UnitCost(kept=100, weight_bytes=200, calls=1)]
    assert choose(heavy, 0.5, "cpu") == [False, True] and choose(heavy, 0.5, "cuda") == [True, False]


def test_measured_unit_costs_are_what_autograd_keeps_and_the_products_flops():
    """Every byte the plain forward keeps is either inside a unit (kept) or a unit's own input (kept in every
    mode); FLOPs are the two 4x8 @ 8x8 products of each block."""
    from lora_lab.lora_core.training.checkpoint_plan import measure_units

    net, x = Net(inplace=False), torch.randn(4, 8)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    storages.pop(x.untyped_storage().data_ptr(), None)  # the network's input
    records = measure_units(checkpoint_units(net), lambda: net(x), guard_inplace=False)
    assert sum(r.kept for r in records) + 3 * x.nbytes == sum(storages.values())
    assert all(r.flops == 2 * (2 * 4 * 8 * 8) and r.calls == 1 for r in records)
    assert all(r.weight_bytes == 2 * (8 * 8 + 8) * 4 for r in records)
    assert all("forward" not in m.__dict__ for m in net.modules())


def test_measuring_an_inplace_block_counts_the_guard_copies_and_leaves_its_input_alone():
    from lora_lab.lora_core.training.checkpoint_plan import measure_units

    net, x = Net(inplace=True), torch.randn(4, 8)
    with torch.no_grad():
        reference = Net(inplace=False)(x.clone())
    out = {}
    records = measure_units(checkpoint_units(net), lambda: out.setdefault("y", net(x.clone())), guard_inplace=True)
    torch.testing.assert_close(out["y"], reference)  # the measuring run did not write the real input
    plain = measure_units(checkpoint_units(Net(inplace=False)), lambda: Net(inplace=False)(x.clone()), False)
    assert all(r.kept > p.kept for r, p in zip(records, plain))  # plus the copies of the input kept by layer_norm


def test_partial_recomputes_exactly_the_chosen_units_and_gives_the_plain_grads():
    net = Net(inplace=True)
    calls = _leaf_calls(net)
    reference = grads(Net(inplace=False), enabled=False, guard_inplace=False)
    got = grads(net, enabled=True, guard_inplace=True, recompute=[True, False, True])
    assert len(calls) == 1 + 2 * 3 + 2 * 2  # stem; six block layers; blocks 0 and 2 once more
    for g, r in zip(got, reference):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
