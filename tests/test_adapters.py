"""Adapter maths: the bypass path equals the layer with merged weight W + multiplier * scale * B @ A."""

import torch
import torch.nn.functional as F
from torch import nn

import pytest

from lora_lab.lora_core.adapters.algorithms import adapter_from_weights, new_adapter
from lora_lab.lora_core.errors import TrainingError
from lora_lab.lora_core.adapters.injection import attached
from lora_lab.lora_core.adapters.lora_weights import LoraModuleWeights


def _randomise_up(adapter, seed=1):
    with torch.no_grad():  # B starts at zero; make it non-zero so the test can fail
        adapter.up.copy_(torch.randn(adapter.up.shape, generator=torch.Generator().manual_seed(seed)))


def _merged_output(layer, weights, x, multiplier):
    merged = layer.weight + multiplier * weights.delta()
    if isinstance(layer, nn.Linear):
        return F.linear(x, merged, layer.bias)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(layer.kernel_size)]
    return conv(x, merged, layer.bias, layer.stride, layer.padding, layer.dilation)


LAYERS = [
    (lambda: nn.Linear(12, 7), (3, 5, 12)),
    (lambda: nn.Conv2d(6, 5, 3, stride=2, padding=1), (2, 6, 9, 9)),
    (lambda: nn.Conv2d(6, 5, 1), (2, 6, 4, 4)),
    (lambda: nn.Conv1d(4, 3, 5, padding=2, dilation=1), (2, 4, 11)),
    (lambda: nn.Conv3d(3, 4, (1, 3, 3), padding=(0, 1, 1)), (1, 3, 2, 5, 5)),
]


@pytest.mark.parametrize("make_layer,x_shape", LAYERS)
@pytest.mark.parametrize("multiplier", [1.0, 0.5, -1.0])
def test_bypass_equals_merged_weight(make_layer, x_shape, multiplier):
    torch.manual_seed(0)
    layer = make_layer()
    adapter = new_adapter(layer, rank=3, alpha=6.0, dropout=0.0, generator=torch.Generator().manual_seed(0))
    _randomise_up(adapter)
    x = torch.randn(x_shape)
    with attached(nn.ModuleDict({"layer": layer}), {"layer": adapter}, multiplier=multiplier):
        bypass = layer(x)
    expected = _merged_output(layer, adapter.weights(), x, multiplier)
    torch.testing.assert_close(bypass, expected, rtol=1e-5, atol=1e-5)
    assert adapter.scale == 2.0


def test_delta_is_scale_up_at_down():
    down, up = torch.randn(4, 10), torch.randn(6, 4)
    w = LoraModuleWeights(down=down, up=up, alpha=2.0)
    assert w.rank == 4 and w.scale == 0.5
    torch.testing.assert_close(w.delta(), 0.5 * up @ down)
    conv = LoraModuleWeights(down=torch.randn(4, 3, 3, 3), up=torch.randn(6, 4, 1, 1), alpha=4.0)
    assert conv.delta().shape == (6, 3, 3, 3)
    torch.testing.assert_close(conv.delta().reshape(6, -1), conv.up.reshape(6, 4) @ conv.down.reshape(4, -1))


def test_init_is_seeded_kaiming_uniform_and_zero_up():
    layer = nn.Linear(64, 32)
    a = new_adapter(layer, 8, 8.0, 0.0, torch.Generator().manual_seed(5))
    b = new_adapter(layer, 8, 8.0, 0.0, torch.Generator().manual_seed(5))
    assert torch.equal(a.down, b.down) and not torch.equal(a.down, new_adapter(layer, 8, 8.0, 0.0, torch.Generator().manual_seed(6)).down)
    assert a.down.abs().max() <= 1 / 64**0.5 and a.down.std() > 0.5 / (3 * 64) ** 0.5
    assert torch.count_nonzero(a.up) == 0


def test_attach_detach_leaves_model_bit_identical():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(5, 8)
    before_out, before_sd = model(x), {k: v.clone() for k, v in model.state_dict().items()}
    adapters = {"0": new_adapter(model[0], 2, 2.0, 0.0, torch.Generator().manual_seed(0))}
    _randomise_up(adapters["0"])
    with attached(model, adapters):
        assert not torch.equal(model(x), before_out)
        assert set(model.state_dict()) == set(before_sd)  # adapters are not registered as submodules
    assert torch.equal(model(x), before_out)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before_sd.items())
    assert not model[0]._forward_hooks


def test_detach_on_exception():
    model = nn.Sequential(nn.Linear(4, 4))
    adapters = {"0": new_adapter(model[0], 2, 2.0, 0.0, torch.Generator())}
    with pytest.raises(RuntimeError):
        with attached(model, adapters):
            raise RuntimeError("boom")
    assert not model[0]._forward_hooks


class CastInForwardLinear(nn.Linear):
    """Like comfy.ops manual-cast Linear: weight kept in another dtype, cast to the input in forward."""

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


def test_works_on_subclassed_cast_in_forward_layer_and_follows_dtype():
    layer = CastInForwardLinear(8, 6).to(torch.bfloat16)  # weight dtype differs from the adapter's fp32
    adapter = new_adapter(layer, 2, 2.0, 0.0, torch.Generator().manual_seed(0))
    _randomise_up(adapter)
    assert adapter.down.dtype == torch.float32
    model = nn.ModuleDict({"l": layer})
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    with attached(model, {"l": adapter}):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    expected = F.linear(x.float(), layer.weight.float() + adapter.weights().delta(), layer.bias.float())
    torch.testing.assert_close(y.float(), expected, rtol=3e-2, atol=3e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16), attached(model, {"l": adapter}):
        assert layer(torch.randn(3, 8)).dtype == torch.bfloat16


def test_grouped_conv_and_bad_shapes_are_refused():
    with pytest.raises(TrainingError, match="grouped"):
        new_adapter(nn.Conv2d(4, 4, 3, groups=4), 2, 2.0, 0.0, torch.Generator())
    with pytest.raises(TrainingError, match="do not fit"):
        adapter_from_weights(nn.Linear(8, 4), LoraModuleWeights(torch.zeros(2, 9), torch.zeros(4, 2), 2.0))
