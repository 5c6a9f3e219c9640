"""Every optimizer: learns a toy problem, and its state survives the training-state file bit for bit."""

import importlib
import sys

import pytest
import torch

from lora_lab.lora_core.errors import TrainingError
from lora_lab.lora_core.optimizers import OPTIMIZERS, MissingPackageError, evaluation_weights, make_optimizer
from lora_lab.lora_core.training.state import TrainState, load_train_state, save_train_state

PACKAGES = {"adamw8bit": "bitsandbytes", "came": "pytorch_optimizer", "lion": "pytorch_optimizer",
            "prodigy": "prodigyopt", "adamw_schedulefree": "schedulefree", "adafactor": "transformers"}
LR = {"prodigy": 1.0, "lion": 3e-3}


def _available(name):
    module = PACKAGES.get(name)
    if module is None:
        return True
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return name in ("prodigy", "adamw_schedulefree") and importlib.util.find_spec("pytorch_optimizer") is not None


def needs(name):
    return pytest.mark.skipif(not _available(name), reason=f"{PACKAGES.get(name)} is not installed")


PARAMS = [pytest.param(name, marks=needs(name)) for name in OPTIMIZERS]


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(64, 80, generator=g)  # 5120 values: above bitsandbytes' 8-bit threshold
    small_target = torch.randn(16, generator=g)
    params = [torch.nn.Parameter(torch.zeros(64, 80)), torch.nn.Parameter(torch.zeros(16))]
    return params, (target, small_target)


def loss_of(params, targets):
    return sum((p - t).pow(2).mean() for p, t in zip(params, targets))


def run(name, params, targets, steps, optimizer=None):
    optimizer = optimizer or make_optimizer(name, [{"params": params, "lr": LR.get(name, 1e-2), "name": "model"}])
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(params, targets).backward()
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("name", PARAMS)
def test_it_learns(name):
    params, targets = problem()
    before = float(loss_of(params, targets).detach())
    optimizer = run(name, params, targets, 100 if name == "prodigy" else 30)  # Prodigy ramps its D up from d0 first
    with evaluation_weights(name, optimizer, params):
        after = float(loss_of(params, targets).detach())
    assert after < 0.9 * before, f"{name}: {before} -> {after}"


@pytest.mark.parametrize("name", PARAMS)
def test_state_round_trips_exactly_through_the_state_file(name, tmp_path):
    params, targets = problem()
    straight = run(name, params, targets, 6)
    expected = [p.detach().clone() for p in params]

    params, targets = problem()
    first = run(name, params, targets, 3)
    state = TrainState(step=3, adapters={f"p{i}::w": p.detach().clone() for i, p in enumerate(params)},
                       optimizer=first.state_dict(), scheduler={}, scaler={}, rng={}, order={})
    path = save_train_state(tmp_path / "x.state", state)
    loaded = load_train_state(path)

    fresh, _ = problem()
    with torch.no_grad():
        for i, p in enumerate(fresh):
            p.copy_(loaded.adapters[f"p{i}::w"])
    optimizer = make_optimizer(name, [{"params": fresh, "lr": LR.get(name, 1e-2), "name": "model"}])
    optimizer.load_state_dict(loaded.optimizer)
    run(name, fresh, targets, 3, optimizer)
    for a, b in zip(fresh, expected):
        assert torch.equal(a.detach(), b), f"{name}: resumed parameters differ"
    if name == "adamw8bit":  # the 8-bit state itself went through the file
        quantised = [s["__bnb_optimizer_quant_state__"] for s in loaded.optimizer["state"].values()]
        assert quantised[0]["state1"].dtype == torch.uint8 and quantised[1]["state1"].dtype == torch.float32


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an absent package looks like to import
    with pytest.raises(MissingPackageError, match=r"'adamw8bit' needs the Python package 'bitsandbytes'.*pip install \"bitsandbytes>=0.50\""):
        make_optimizer("adamw8bit", [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3}])


def test_bad_settings_are_named():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(TrainingError, match="unknown optimizer 'sgd'"):
        make_optimizer("sgd", [{"params": p, "lr": 1e-3}])
    with pytest.raises(TrainingError, match="'adamw' has no setting 'd_coef'.*betas, eps, weight_decay"):
        make_optimizer("adamw", [{"params": p, "lr": 1e-3}], {"d_coef": 2.0})
    if _available("prodigy"):
        with pytest.raises(TrainingError, match="prodigy estimates its own step size.*text encoder learning rate 0.0001"):
            make_optimizer("prodigy", [{"params": p, "lr": 1e-4, "name": "text encoder"}])


def test_community_defaults():
    assert OPTIMIZERS["adafactor"].defaults["relative_step"] is False  # kohya's LoRA setting
    assert OPTIMIZERS["adafactor"].defaults["scale_parameter"] is False
    assert OPTIMIZERS["prodigy"].defaults["d_coef"] == 1.0 and OPTIMIZERS["prodigy"].estimates_lr
    assert OPTIMIZERS["came"].defaults["betas"] == (0.9, 0.999, 0.9999)
    assert OPTIMIZERS["adamw_schedulefree"].schedule_free


@pytest.mark.parametrize("name", PARAMS)
def test_declared_state_size_matches_the_real_optimizer(name):
    """The memory plan counts spec.state_slots fp32 values of optimizer state per trained value: measured on
    LoRA-shaped tensors (rank-8 factors of a 4096-wide layer, a DoRA-like magnitude vector) after two steps,
    the real optimizer's state is at most that, and not less than 40% of it (no idle over-estimate)."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((8, 4096), (4096, 8), (640,))]
    optimizer = make_optimizer(name, [{"params": params, "lr": LR.get(name, 1e-3), "name": "model"}])
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for state in optimizer.state.values()
                for t in state.values() if isinstance(t, torch.Tensor) and t.numel() > 1}
    measured = sum(storages.values()) / sum(p.numel() * 4 for p in params)
    declared = OPTIMIZERS[name].state_slots
    assert 0.4 * declared <= measured <= declared, (name, measured, declared)
