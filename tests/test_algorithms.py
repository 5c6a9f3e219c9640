"""LoHa, LoKr and DoRA side paths equal the layer with the weight ComfyUI's loader would build from their
saved keys (W + t Delta W; DoRA: W + t (W' - W)), computed here independently by materialising everything."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_lab.converters.delta import factor_delta
from lora_lab.converters.module_weights import ModuleWeights as ConverterWeights
from lora_lab.lora_core.adapters.algorithms import adapter_from_weights, new_adapter
from lora_lab.lora_core.adapters.dora import column_norms, row_norms
from lora_lab.lora_core.adapters.lokr import factorization
from lora_lab.lora_core.errors import TrainingError
from lora_lab.lora_core.training.frozen_layers import plain_fetch
from lora_lab.lora_core.adapters.injection import attached
from lora_lab.lora_core.adapters.lora_weights import LoraWeights

LAYERS = [
    (lambda: nn.Linear(12, 8), (3, 5, 12)),
    (lambda: nn.Conv2d(6, 4, 3, stride=2, padding=1), (2, 6, 9, 9)),
    (lambda: nn.Conv2d(8, 6, 1), (2, 8, 4, 4)),
]
VARIANTS = [
    ("lora", {}), ("loha", {}), ("lokr", {"factor": -1}), ("lokr", {"factor": 2, "decompose_both": True}),
    ("lokr", {"factor": 2, "rank_small": True}), ("dora", {"axis": "input"}), ("dora", {"axis": "output"}),
]


def _randomise(adapter, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the zero-initialised factor would make every test pass trivially
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def _apply(layer, weight, x):
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation)


def merged_weight(layer, saved, t):
    """What ComfyUI's loader does with the saved keys at strength t (DoRA per LyCORIS/PEFT semantics)."""
    w = layer.weight.detach().float()
    delta = saved.delta().reshape(w.shape)
    if getattr(saved, "dora_scale", None) is None:
        return w + t * delta
    merged = w + delta
    scale = saved.dora_scale
    if scale.shape[0] == w.shape[0] and scale.shape[1] == 1:  # output axis: norm of each output row
        norm = merged.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
    else:  # input axis: norm over outputs (and kernel) of each input channel
        norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(1, -1, *[1] * (w.dim() - 2))
    dora = merged * scale / (norm + torch.finfo(w.dtype).eps)
    return w + t * (dora - w)


def _make(algorithm, options, layer):
    options = dict(options)
    rank = 1 if options.pop("rank_small", False) else 3
    return new_adapter(layer, rank, 6.0, 0.0, torch.Generator().manual_seed(0), algorithm, plain_fetch, "layer", **options)


@pytest.mark.parametrize("algorithm,options", VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("make_layer,x_shape", LAYERS)
def test_bypass_equals_merged_weight(algorithm, options, make_layer, x_shape):
    torch.manual_seed(0)
    layer = make_layer().requires_grad_(False)
    x = torch.randn(x_shape)
    adapter = _make(algorithm, options, layer)
    with attached(nn.ModuleDict({"layer": layer}), {"layer": adapter}):
        assert torch.allclose(layer(x), _apply(layer, layer.weight, x), atol=1e-5)  # fresh adapter: layer unchanged
    _randomise(adapter)
    saved = adapter.weights()
    for t in (1.0, 0.5, -1.0):
        with attached(nn.ModuleDict({"layer": layer}), {"layer": adapter}, multiplier=t):
            bypass = layer(x)
        torch.testing.assert_close(bypass, _apply(layer, merged_weight(layer, saved, t), x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("algorithm,options", VARIANTS, ids=lambda v: str(v))
def test_saved_keys_round_trip_and_converter_reads_the_same_delta(algorithm, options):
    layer = nn.Conv2d(8, 6, 3, padding=1).requires_grad_(False)
    adapter = _make(algorithm, options, layer)
    _randomise(adapter)
    lora = LoraWeights({"block.conv": adapter.weights()})
    sd = lora.kohya_state_dict()
    expected = {"lora": {"lora_down.weight", "lora_up.weight"}, "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},
                "dora": {"lora_down.weight", "lora_up.weight", "dora_scale"}}.get(algorithm)
    suffixes = {k.split(".", 1)[1] for k in sd} - {"alpha"}
    if expected is not None:
        assert suffixes == expected
    else:
        assert suffixes <= {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"}
        assert all(sd[k].dim() == 2 for k in sd if k.endswith(("_a", "_b")))  # ComfyUI multiplies them with mm
    if algorithm == "dora":  # ComfyUI's shapes: (1, in, 1, 1) input axis, (out, 1, 1, 1) output axis
        shape = (1, 8, 1, 1) if options["axis"] == "input" else (6, 1, 1, 1)
        assert tuple(sd["lora_unet_block_conv.dora_scale"].shape) == shape
    back = LoraWeights.from_kohya_state_dict(sd, ["block.conv"], kernels={"block.conv": (3, 3)})
    restored = adapter_from_weights(layer, back.modules["block.conv"], plain_fetch)
    x = torch.randn(2, 8, 5, 5)
    with attached(nn.ModuleDict({"layer": layer}), {"layer": adapter}):
        a = layer(x)
    with attached(nn.ModuleDict({"layer": layer}), {"layer": restored}):
        b = layer(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    roles = {k.split(".", 1)[1].replace("lora_down.weight", "down").replace("lora_up.weight", "up"): v
             for k, v in sd.items() if not k.endswith((".alpha", ".dora_scale"))}
    kind = "lora" if algorithm in ("lora", "dora") else algorithm
    converter = ConverterWeights(kind, roles, float(sd["lora_unet_block_conv.alpha"]))
    torch.testing.assert_close(factor_delta(converter).reshape(6, -1), adapter.weights().delta().reshape(6, -1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 12), (6, 5, 3, 3)])
def test_dora_norms_without_materialising_equal_the_materialised_ones(shape):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(shape, generator=g, dtype=torch.float64).float()
    up = torch.randn(shape[0], 4, generator=g)
    down = torch.randn(4, *shape[1:], generator=g)
    s = 0.7
    merged = w + s * (up @ down.reshape(4, -1)).reshape(shape)
    torch.testing.assert_close(row_norms(w, up, down, s), merged.reshape(shape[0], -1).norm(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(column_norms(w, up, down, s), merged.transpose(0, 1).reshape(shape[1], -1).norm(dim=1),
                               rtol=1e-5, atol=1e-5)


def test_dora_gradient_reaches_magnitude_and_factors_but_not_through_the_norm():
    layer = nn.Linear(10, 6).requires_grad_(False)
    adapter = _make("dora", {"axis": "output"}, layer)
    _randomise(adapter)
    with attached(nn.ModuleDict({"layer": layer}), {"layer": adapter}):
        layer(torch.randn(4, 10)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (adapter.magnitude, adapter.down, adapter.up))


def test_lokr_factorization_and_bad_factor_is_named():
    assert factorization(128, -1) == (8, 16) and factorization(128, 4) == (4, 32) and factorization(127) == (1, 127)
    assert factorization(320, 8) == (8, 40) and factorization(360, 16) == (15, 24)
    with pytest.raises(TrainingError, match=r"LoKr factor 64 is larger than layer blocks\.0\.q \(out=8, in=12\)"):
        new_adapter(nn.Linear(12, 8), 4, 4.0, 0.0, torch.Generator(), "lokr", name="blocks.0.q", factor=64)


def test_unknown_algorithm_is_named():
    with pytest.raises(TrainingError, match="unknown algorithm 'glora'.*lora, loha, lokr, dora"):
        new_adapter(nn.Linear(4, 4), 2, 2.0, 0.0, torch.Generator(), "glora")
