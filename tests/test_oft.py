"""OFT: the Cayley rotation is orthogonal and starts at the identity; the bypass equals the weight ComfyUI's loader
builds from the saved keys (computed here block by block with an explicit loop); saved keys round-trip."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_lab.lora_core.adapters.algorithms import adapter_from_weights, check_algorithm, new_adapter
from lora_lab.lora_core.adapters.injection import attached
from lora_lab.lora_core.adapters.lora_weights import LoraWeights
from lora_lab.lora_core.adapters.oft import OftAdapter, cayley
from lora_lab.lora_core.errors import LoraFormatError, TrainingError
from lora_lab.lora_core.training.frozen_layers import plain_fetch

LAYERS = [
    (lambda: nn.Linear(12, 8), (3, 5, 12)),
    (lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1), (2, 6, 9, 9)),
    (lambda: nn.Conv2d(8, 6, 1, bias=False), (2, 8, 4, 4)),
]


def _oft(layer, block_size=0, constraint=0.0, rank=2):
    return new_adapter(layer, rank, 99.0, 0.0, torch.Generator(), "oft", plain_fetch, "layer",
                       block_size=block_size, constraint=constraint)


def _randomise(adapter, seed=1, scale=0.3):
    with torch.no_grad():
        adapter.blocks.add_(torch.randn(adapter.blocks.shape, generator=torch.Generator().manual_seed(seed)) * scale)


def reference_rotation(blocks, constraint):
    """R_k = (I + Q_k)(I - Q_k)^-1 with Q = B - B^T, all of Q scaled to norm `constraint` when it is larger."""
    q = blocks.double() - blocks.double().transpose(1, 2)
    if constraint > 0 and q.norm() + 1e-8 > constraint:
        q = q * constraint / (q.norm() + 1e-8)
    eye = torch.eye(q.shape[1], dtype=torch.float64)
    return torch.stack([(eye + qk) @ torch.linalg.inv(eye - qk) for qk in q])


def comfy_weight(weight, blocks, constraint, strength):
    """ComfyUI's calculate_weight for oft_blocks, read block by block: the rows of block k become
    W_k + s * (s R_k - s I)^T W_k."""
    r = reference_rotation(blocks, constraint)
    k, n = r.shape[0], r.shape[1]
    w = weight.double()
    rows = w.reshape(k, n, -1)
    out = torch.stack([rows[i] + strength * (strength * r[i] - strength * torch.eye(n, dtype=torch.float64)).T @ rows[i]
                       for i in range(k)])
    return out.reshape(w.shape).float()


def _apply(layer, weight, x):
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation)


@pytest.mark.parametrize("constraint", [0.0, 0.5])
def test_rotation_is_orthogonal_and_q_skew(constraint):
    blocks = torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(0))
    r = cayley(blocks, constraint)
    eye = torch.eye(4).expand(5, 4, 4)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye, rtol=0, atol=1e-5)
    torch.testing.assert_close(r.transpose(1, 2) @ r, eye, rtol=0, atol=1e-5)
    assert torch.linalg.det(r).sub(1).abs().max() < 1e-4  # Cayley: rotations only, never a reflection
    torch.testing.assert_close(r.double(), reference_rotation(blocks, constraint), rtol=0, atol=1e-5)
    assert (r - eye).abs().max() > 0.1  # the blocks really rotate


def test_constraint_caps_the_norm_of_q_over_all_blocks():
    blocks = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    q = blocks - blocks.transpose(1, 2)
    assert q.norm() > 1.0
    capped = cayley(blocks, 1.0)
    # R = (I + Q)(I - Q)^-1  <=>  Q = (R - I)(R + I)^-1: recover the Q that was used
    eye = torch.eye(4)
    used = torch.stack([(rk - eye) @ torch.linalg.inv(rk + eye) for rk in capped.double()])
    torch.testing.assert_close(used.norm().float(), torch.tensor(1.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cayley(blocks, float(q.norm()) * 2), cayley(blocks, 0.0), rtol=0, atol=0)


@pytest.mark.parametrize("make_layer,x_shape", LAYERS)
def test_zero_blocks_leave_the_layer_bit_identical(make_layer, x_shape):
    torch.manual_seed(0)
    layer = make_layer().requires_grad_(False)
    x = torch.randn(x_shape)
    adapter = _oft(layer)
    assert adapter.blocks.abs().max() == 0
    with attached(nn.ModuleDict({"layer": layer}), {"layer": adapter}):
        torch.testing.assert_close(layer(x), _apply(layer, layer.weight, x), rtol=0, atol=0)


@pytest.mark.parametrize("constraint", [0.0, 0.4])
@pytest.mark.parametrize("make_layer,x_shape", LAYERS)
def test_bypass_equals_comfyui_merged_weight(make_layer, x_shape, constraint):
    torch.manual_seed(0)
    layer = make_layer().requires_grad_(False)
    x = torch.randn(x_shape)
    adapter = _oft(layer, constraint=constraint)
    _randomise(adapter)
    saved = adapter.weights()
    for t in (1.0, 0.5, -1.0):
        merged = comfy_weight(layer.weight, saved.blocks, constraint, t)
        with attached(nn.ModuleDict({"layer": layer}), {"layer": adapter}, multiplier=t):
            bypass = layer(x)
        torch.testing.assert_close(bypass, _apply(layer, merged, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(saved.delta_for(layer.weight, t), merged - layer.weight, rtol=1e-5, atol=1e-6)
    assert (comfy_weight(layer.weight, saved.blocks, constraint, 1.0) - layer.weight).abs().max() > 1e-2


def test_bias_is_not_rotated():
    """The loader rotates W only: with x = 0 the layer's output is its bias, rotated blocks or not."""
    layer = nn.Linear(6, 4).requires_grad_(False)
    adapter = _oft(layer)
    _randomise(adapter)
    with attached(nn.ModuleDict({"layer": layer}), {"layer": adapter}):
        torch.testing.assert_close(layer(torch.zeros(2, 6)), layer.bias.expand(2, 4), rtol=0, atol=1e-7)


def test_block_size_follows_lycoris_factorization_and_options_are_checked():
    assert tuple(_oft(nn.Linear(4, 320), rank=8).blocks.shape) == (40, 8, 8)
    assert tuple(_oft(nn.Linear(4, 320), rank=64).blocks.shape) == (20, 16, 16)  # capped at sqrt(outputs)
    assert tuple(_oft(nn.Linear(4, 320), block_size=4, rank=64).blocks.shape) == (80, 4, 4)
    assert tuple(_oft(nn.Conv2d(3, 7, 3), rank=4).blocks.shape) == (7, 1, 1)  # a prime width: 1x1 blocks (identity)
    check_algorithm("oft", {"block_size": 8, "constraint": 1})  # an int is a fine float
    with pytest.raises(TrainingError, match="oft option constraint must be float, got True"):
        check_algorithm("oft", {"constraint": True})
    with pytest.raises(TrainingError, match="has no option 'factor'"):
        check_algorithm("oft", {"factor": 2})
    with pytest.raises(TrainingError, match="constraint must be >= 0"):
        _oft(nn.Linear(4, 8), constraint=-1.0)
    with pytest.raises(TrainingError, match="takes no input dropout"):
        new_adapter(nn.Linear(4, 8), 2, 2.0, 0.1, torch.Generator(), "oft")


def test_saved_keys_round_trip_exactly():
    layer = nn.Conv2d(8, 6, 3, padding=1).requires_grad_(False)
    adapter = _oft(layer, constraint=0.7)
    _randomise(adapter)
    sd = LoraWeights({"block.conv": adapter.weights()}).kohya_state_dict()
    assert set(sd) == {"lora_unet_block_conv.oft_blocks", "lora_unet_block_conv.alpha"}
    assert tuple(sd["lora_unet_block_conv.oft_blocks"].shape) == (3, 2, 2)
    assert float(sd["lora_unet_block_conv.alpha"]) == pytest.approx(0.7)  # alpha is the constraint
    back = LoraWeights.from_kohya_state_dict(sd, ["block.conv"])
    restored = adapter_from_weights(layer, back.modules["block.conv"], plain_fetch)
    assert isinstance(restored, OftAdapter)
    x = torch.randn(2, 8, 5, 5)
    with attached(nn.ModuleDict({"layer": layer}), {"layer": adapter}):
        a = layer(x)
    with attached(nn.ModuleDict({"layer": layer}), {"layer": restored}):
        b = layer(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    no_alpha = LoraWeights.from_kohya_state_dict({"lora_unet_block_conv.oft_blocks": sd["lora_unet_block_conv.oft_blocks"]},
                                                 ["block.conv"])
    assert no_alpha.modules["block.conv"].alpha == 0.0  # ComfyUI: a missing alpha is no constraint


def test_files_it_cannot_continue_are_refused_by_name():
    blocks = torch.zeros(3, 2, 2)
    with pytest.raises(LoraFormatError, match="rescale"):
        LoraWeights.from_kohya_state_dict({"lora_unet_a.oft_blocks": blocks, "lora_unet_a.rescale": torch.ones(6, 1)}, ["a"])
    with pytest.raises(LoraFormatError, match="BOFT"):
        LoraWeights.from_kohya_state_dict({"lora_unet_a.oft_blocks": torch.zeros(2, 3, 2, 2)}, ["a"])
    with pytest.raises(TrainingError, match=r"do not fit a layer with 8 outputs"):
        adapter_from_weights(nn.Linear(4, 8), LoraWeights.from_kohya_state_dict({"lora_unet_a.oft_blocks": blocks},
                                                                                   ["a"]).modules["a"])


def test_gradient_reaches_the_blocks_and_a_step_changes_the_output():
    layer = nn.Linear(10, 6).requires_grad_(False)
    adapter = _oft(layer, rank=3)
    x, target = torch.randn(8, 10), torch.randn(8, 6)
    opt = torch.optim.SGD(adapter.parameters(), lr=0.05)
    with attached(nn.ModuleDict({"layer": layer}), {"layer": adapter}):
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = (layer(x) - target).pow(2).mean()
            loss.backward()
            assert adapter.blocks.grad.abs().sum() > 0
            opt.step()
            losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_memory_plan_counts_the_oft_blocks_the_run_will_have():
    from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
    from lora_lab.lora_core.cli.tiny_models import tiny_unet
    from lora_lab.lora_core.training.memory_estimate import adapter_parameter_count
    from lora_lab.lora_core.training.run_setup import make_adapters
    from lora_lab.lora_core.training.trainer import TrainConfig

    backend = DDPMUNetBackend(tiny_unet(seed=0, channels=(16, 32)))
    cfg = TrainConfig(rank=4, targets="attention_mlp", algorithm="oft", algorithm_options={"block_size": 4})
    real = [a for a in make_adapters(backend, cfg, torch.Generator().manual_seed(0)).values()]
    assert real and all(isinstance(a, OftAdapter) for a in real)
    assert adapter_parameter_count(backend, cfg) == sum(a.blocks.numel() for a in real)


def test_cli_writes_oft_for_sd15_in_comfyui_form_and_refuses_other_forms_before_loading(tmp_path):
    from cli_helpers import tiny_pipeline, write_config
    from lora_lab.converters.trained_lora import FORMS
    from lora_lab.lora_core.cli.config import ConfigError, load_config
    from lora_lab.lora_core.cli.model_folders import inspect_folder
    from lora_lab.lora_core.cli.train import preflight, run_training
    from lora_lab.lora_core.files.lora_file import load_lora_file

    folder, out = tiny_pipeline("sd15", tmp_path / "models"), tmp_path / "out"
    cfg = write_config(tmp_path / "run.toml", folder, out,
                       train={"algorithm": "oft", "algorithm_options": {"block_size": 4, "constraint": 0.0}})
    with pytest.raises(ConfigError, match=r"only for SD1\.5/SDXL and only in ComfyUI form"):
        preflight(load_config(cfg), 1)
    config = load_config(cfg, ['output.formats=["comfyui"]'])
    preflight(config, 1)
    result = run_training(config, inspect_folder(folder), FORMS)
    tensors, meta = load_lora_file(out / "lora.safetensors")
    assert tensors and {k.rsplit(".", 1)[1] for k in tensors} == {"oft_blocks", "alpha"}
    assert meta["lora_lab_algorithm"] == "oft" and len(result.lora.modules) == sum(k.endswith(".oft_blocks") for k in tensors)
    assert any(t.abs().max() > 0 for k, t in tensors.items() if k.endswith(".oft_blocks"))  # two steps moved it
