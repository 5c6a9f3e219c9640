"""Frozen base layers back-propagate exactly, with inference-tensor weights (ComfyUI's loaders) and with
weights cast in forward (partial loading, bf16/fp8 storage), without keeping the casts or touching the model."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_lab.lora_core.training.frozen_layers import autograd_safe, frozen_base, plain_fetch

import peak_rss


class ScaleNorm(nn.Module):
    """A custom norm whose scale the forward uses directly (Flux's RMSNorm does this)."""

    def __init__(self, width):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.group = nn.GroupNorm(2, 8)
        self.proj = nn.Linear(8, 16)
        self.layer = nn.LayerNorm(16)
        self.scale = ScaleNorm(16)
        self.out = nn.Linear(16, 4)
        self.register_buffer("shift", torch.randn(4, generator=g))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.requires_grad_(False)

    def forward(self, x):
        h = self.group(self.reflect(torch.tanh(self.conv(x))))
        h = h.mean((2, 3))
        h = self.scale(self.layer(torch.tanh(self.proj(h))))
        return self.out(h) * self.shift


def _as_inference(net: nn.Module) -> nn.Module:
    """Weights as ComfyUI's loaders leave them: inference tensors."""
    with torch.inference_mode():
        state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(state, assign=True)
    net.requires_grad_(False)
    assert all(p.is_inference() for p in net.parameters())
    return net


def _plain_input_grad(net, x):
    x = x.clone().requires_grad_(True)
    net(x).pow(2).sum().backward()
    return x.grad


def test_inference_weights_cannot_be_trained_through_without_it():
    net = _as_inference(Net())
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
        net(x).sum().backward()


def test_inference_weights_give_the_reference_gradient():
    x = torch.randn(2, 4, 6, 6)
    reference = Net()
    expected = _plain_input_grad(reference, x)
    net = _as_inference(Net())
    params = {n: p for n, p in net.named_parameters()}
    with frozen_base(net) as stats:
        xg = x.clone().requires_grad_(True)
        net(xg).pow(2).sum().backward()
    torch.testing.assert_close(xg.grad, expected, rtol=1e-5, atol=1e-6)
    assert stats.formula_layers == 3  # conv, proj, out; the reflect-padded conv is aliased instead
    assert stats.aliased_modules == 5  # reflect, group, layer, scale, and the root's buffer
    # nothing of the model was replaced, and every wrapper is gone
    assert all(p is params[n] for n, p in net.named_parameters())
    assert all("forward" not in m.__dict__ for m in net.modules())


class CastLinear(nn.Linear):
    """Stored in bf16, computed in fp32, cast in forward: what ComfyUI's manual_cast / partial loading do."""

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class CastNet(nn.Module):
    def __init__(self, width=256, depth=4):
        super().__init__()
        self.layers = nn.ModuleList([CastLinear(width, width) for _ in range(depth)])
        self.to(torch.bfloat16).requires_grad_(False)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def _cast_fetch(calls):
    def fetch(module, like):
        calls.append(module)
        return plain_fetch(module, like)
    return fetch


def _saved(net, x, **wrap):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = x.clone().requires_grad_(True)
    with frozen_base(net, **wrap) if wrap else torch.enable_grad():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(x)
        out.sum().backward()
    return sum(storages.values()), x.grad


def test_cast_in_forward_weights_are_not_kept_but_fetched_again():
    net = CastNet()
    x = torch.randn(8, 256)
    kept, reference = _saved(net, x)
    calls = []
    frozen, grad = _saved(net, x, fetch=_cast_fetch(calls), is_plain=lambda m: isinstance(m, CastLinear),
                          stored=lambda m, like: None)  # a cast the backend must do: fetched whole
    weight_copies = 4 * 256 * 256 * 4  # the fp32 casts autograd keeps without the wrapper
    assert kept >= weight_copies
    assert frozen <= kept - weight_copies
    assert calls == list(reversed(list(net.layers)))  # each layer's weight fetched once, in backward
    torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-6)


def test_autograd_safe_alias_shares_memory_and_keeps_attributes():
    with torch.inference_mode():
        p = nn.Parameter(torch.randn(3, 3), requires_grad=False)
    p._model_dtype = torch.bfloat16
    alias = autograd_safe(p)
    assert not alias.is_inference() and alias.data_ptr() == p.data_ptr()
    assert alias._model_dtype is torch.bfloat16
    normal = torch.randn(2)
    assert autograd_safe(normal) is normal


@pytest.mark.parametrize("stored", [True, False], ids=["stored-cast-slices", "fetched-whole"])
@pytest.mark.parametrize("dims, stride, padding, dilation", [(0, 1, 0, 1), (1, 2, 1, 1), (2, 1, 1, 1), (2, 2, 0, 2),
                                                          (3, 1, 1, 1)])
def test_sliced_layers_equal_the_whole(monkeypatch, dims, stride, padding, dilation, stored):
    """Output and input gradient, computed one slice of output channels at a time (a cast from float64 storage,
    or a fetched fp32 weight), are the layer's own."""
    from lora_lab.lora_core.training import frozen_layers

    torch.manual_seed(1)
    layer = nn.Linear(6, 10) if dims == 0 else \
        {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](6, 10, 3, stride, padding, dilation)
    layer.requires_grad_(False)
    x = torch.randn(2, 6, *([9] * dims)) if dims else torch.randn(2, 5, 6)
    reference = x.double().requires_grad_(True)
    y_ref = layer.double()(reference)
    grad = torch.randn(y_ref.shape)
    y_ref.backward(grad.double())
    if not stored:
        layer.float()  # computed as stored: no cast, the weight comes whole from the fetch
    monkeypatch.setattr(frozen_layers, "SLICE_BYTES", layer.weight[0].numel() * 4 * 3)  # slices of 3, 3, 3, 1 rows
    calls, pieces = [], []
    monkeypatch.setattr(frozen_layers, "_cast", lambda t, like: pieces.append(t) or (None if t is None else t.to(like)))
    sliced = x.clone().requires_grad_(True)
    wrap = {} if stored else {"stored": lambda m, like: None, "fetch": _cast_fetch(calls)}
    with frozen_base(layer, **wrap):
        y = layer(sliced)
        y.backward(grad)
    torch.testing.assert_close(y, y_ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sliced.grad, reference.grad.float(), rtol=1e-5, atol=1e-5)
    assert calls == ([] if stored else [layer])
    weight_slices = [t for t in pieces if t is not None and t.dim() == layer.weight.dim()]
    whole = not stored and dims == 0  # Linear: one matmul on the fetched weight, nothing to slice
    assert [t.shape[0] for t in weight_slices] == ([10] if whole else [3, 3, 3, 1] * (2 if stored else 1))

    # Without grad (a checkpointed unit's first pass), a stored cast is still sliced, with the same output.
    pieces.clear()
    with frozen_base(layer, **wrap), torch.no_grad():
        y_no_grad = layer(x)
    torch.testing.assert_close(y_no_grad, y_ref.float(), rtol=1e-5, atol=1e-5)
    weight_slices = [t for t in pieces if t is not None and t.dim() == layer.weight.dim()]
    assert [t.shape[0] for t in weight_slices] == ([3, 3, 3, 1] if stored else [])


def test_layers_computed_as_stored_are_not_sliced(monkeypatch):
    """A Linear whose weight is used as stored (no cast) runs its own forward: slicing would only cost memory."""
    from lora_lab.lora_core.training import frozen_layers

    layer = nn.Linear(64, 64).requires_grad_(False)
    monkeypatch.setattr(frozen_layers, "SLICE_BYTES", 64 * 4)
    monkeypatch.setattr(frozen_layers, "_sliced_output", lambda *a: pytest.fail("sliced without a cast"))
    x = torch.randn(3, 64, requires_grad=True)
    with frozen_base(layer):
        layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(3, 64))


def test_an_instance_forward_keeps_its_own_path():
    """A layer whose forward was replaced on the instance (ComfyUI's bypass LoRA) is not a textbook layer: it
    keeps autograd's own path, so its extra term is in the output and in the gradient."""
    layer = nn.Linear(4, 4).requires_grad_(False)
    extra = torch.randn(4, 4)
    layer.forward = lambda x: F.linear(x, layer.weight, layer.bias) + x @ extra
    x = torch.randn(2, 4, requires_grad=True)
    reference = x.detach().clone().requires_grad_(True)
    (F.linear(reference, layer.weight, layer.bias) + reference @ extra).sum().backward()
    with frozen_base(layer) as stats:
        y = layer(x)
        y.sum().backward()
    assert stats.formula_layers == 0
    torch.testing.assert_close(x.grad, reference.grad)


def test_an_instance_forward_that_is_the_class_forward_takes_the_formula():
    """After ComfyUI ejects a bypass LoRA it writes the layer's original bound forward back on the instance:
    that is the textbook layer again, so it gets the formula (no weight saved), and is restored as it was."""
    layer = nn.Linear(4, 4).requires_grad_(False)
    layer.forward = layer.forward  # what eject leaves: the class's forward, bound, in the instance dict
    left = layer.__dict__["forward"]
    x = torch.randn(2, 4, requires_grad=True)
    with frozen_base(layer) as stats:
        layer(x).sum().backward()
    assert stats.formula_layers == 1
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(2, 4))
    assert layer.__dict__["forward"] is left


@pytest.mark.skipif(not peak_rss.AVAILABLE, reason="needs Linux /proc peak RSS")
@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
def test_a_large_cast_layer_trains_through_a_slice_of_its_weight_at_a_time(checkpointed):
    """SD1.5's largest conv stored in bf16, computed in fp32: forward and backward hold slices of the fp32
    weight, never the whole 118 MB cast (nor oneDNN's whole copy of it). Measured both ways in one fresh
    process after a warm-up (a long test process reuses memory it freed earlier, which hides growth), so the
    saving itself is asserted, not a machine-dependent absolute figure.

    checkpointed: the layer runs inside a reentrant checkpoint, as every unit does with Train LoRA's default,
    so its first pass runs under no_grad (where a whole cast once slipped through) and the second in backward."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        sliced, whole, fp32_weight = pool.apply(_sliced_and_whole_growth, (checkpointed,))
    print(f"peak growth: sliced {sliced / 2**20:.1f} MiB, whole {whole / 2**20:.1f} MiB, fp32 weight {fp32_weight / 2**20:.1f} MiB")
    assert whole > fp32_weight, (whole / 2**20, "a whole cast must cost at least the fp32 weight")
    assert whole - sliced > 0.75 * fp32_weight, (sliced / 2**20, whole / 2**20)
    assert sliced < 0.75 * fp32_weight, sliced / 2**20


class _CastConv(nn.Conv2d):  # casts its weight in forward, as ComfyUI's manual_cast layers do
    def forward(self, x):
        return self._conv_forward(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


def _sliced_and_whole_growth(checkpointed: bool) -> tuple[int, int, int]:
    """(peak growth sliced, peak growth with one slice = the whole cast, fp32 weight bytes), in this process."""
    from lora_lab.lora_core.training import frozen_layers

    def peak_growth(conv: nn.Module) -> int:
        x = torch.randn(1, conv.in_channels, 8, 8, requires_grad=True)

        def step():
            with frozen_base(conv, is_plain=lambda m: True):
                y = torch.utils.checkpoint.checkpoint(conv, x, use_reentrant=True) if checkpointed else conv(x)
                y.sum().backward()

        growth, _ = peak_rss.peak_growth(step)
        assert x.grad.shape == x.shape
        return growth

    peak_growth(_CastConv(256, 128, 3, padding=1).to(torch.bfloat16).requires_grad_(False))  # oneDNN's own set-up
    conv = _CastConv(2560, 1280, 3, padding=1).to(torch.bfloat16).requires_grad_(False)
    sliced = peak_growth(conv)
    frozen_layers.SLICE_BYTES = 2**40  # one slice: the whole cast, as without slicing (this process only)
    return sliced, peak_growth(conv), conv.weight.numel() * 4
