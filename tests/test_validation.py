"""Validation loss at fixed noise and fixed noise levels: repeatable, does not disturb training, shown in the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
from lora_lab.lora_core.errors import TrainingError
from lora_lab.lora_core.files.loss_plot import VALIDATION, plot_losses
from lora_lab.lora_core.cli.tiny_models import TinyTextEncoder, tiny_unet
from lora_lab.lora_core.training.trainer import TrainConfig, train
from lora_lab.lora_core.data.samples import TrainSample
from lora_lab.lora_core.training.validation import ValidationLoss


@pytest.fixture(scope="module")
def backend():
    return DDPMUNetBackend(tiny_unet(seed=0, channels=(16, 32)).requires_grad_(False))


def samples(n: int, seed: int) -> list[TrainSample]:
    te, g = TinyTextEncoder(), torch.Generator().manual_seed(seed)
    shapes = [(4, 8, 8), (4, 8, 16)]
    return [TrainSample(torch.randn(shapes[i % 2], generator=g), {"encoder_hidden_states": te(f"thing {i}")}, f"thing {i}")
            for i in range(n)]


def run(backend, validate=None, dropout=0.0):
    train_set = [s for s in samples(6, seed=1) if s.latent.shape[-1] == 8]
    config = TrainConfig(steps=4, learning_rate=1e-2, rank=4, alpha=4.0, seed=0, dropout=dropout, targets="attention_mlp")
    return train(backend, train_set, config, validate=validate, on_step=lambda report: None)


def test_two_evaluations_of_the_same_lora_give_the_same_value(backend):
    held_out = samples(3, seed=2)
    values = []

    def validate(step):
        values.extend([check.evaluate(), check.evaluate()])
        return values[-1]

    check = ValidationLoss(backend, held_out, every=1, batch_size=2)
    run(backend, validate=validate, dropout=0.3)  # adapter dropout on: it must not make validation random
    pairs = list(zip(values[::2], values[1::2]))
    assert len(pairs) == 4 and all(a == b and math.isfinite(a) for a, b in pairs)
    assert len({a for a, _ in pairs}) == 4  # and it follows the LoRA as it trains


def test_validation_does_not_change_training(backend):
    plain = run(backend, dropout=0.2)
    check = ValidationLoss(backend, samples(3, seed=2), every=2, last_step=3)
    validated = run(backend, validate=check, dropout=0.2)
    for name, module in plain.lora.modules.items():
        other = validated.lora.modules[name]
        assert torch.equal(module.down, other.down) and torch.equal(module.up, other.up)
    assert plain.losses == validated.losses
    assert [step for step, _ in check.history] == [2, 3, 4]


def test_reports_carry_the_validation_loss(backend):
    reports = []
    check = ValidationLoss(backend, samples(2, seed=2), every=2)
    train_set = [s for s in samples(6, seed=1) if s.latent.shape[-1] == 8]
    train(backend, train_set, TrainConfig(steps=4, rank=4, alpha=4.0), validate=check, on_step=reports.append)
    assert [r.val_loss is not None for r in reports] == [False, True, False, True]
    assert [(r.step, r.val_loss) for r in reports if r.val_loss is not None] == check.history


def test_validation_needs_samples(backend):
    with pytest.raises(TrainingError, match="held-out"):
        ValidationLoss(backend, [], every=5)


def test_plot_shows_validation_points():
    losses = [1.0 / (1 + 0.1 * i) for i in range(50)]
    colour = np.array(VALIDATION)
    without = np.asarray(plot_losses(losses))
    with_val = np.asarray(plot_losses(losses, validation=[(10, 0.9), (20, 0.8), (50, 0.7)]))
    count = lambda img: int((np.abs(img.astype(int) - colour).sum(-1) < 30).sum())  # noqa: E731
    assert count(without) == 0 and count(with_val) > 50
    # a validation value outside the training range widens the axis instead of being cut off
    high = np.asarray(plot_losses(losses, validation=[(25, 5.0)]))
    assert count(high) > 10


def test_validation_runs_without_a_progress_listener(backend):
    # a script or the CLI may train with no on_step: the held-out loss must still be taken
    check = ValidationLoss(backend, samples(2, seed=2), every=2)
    train_set = [s for s in samples(6, seed=1) if s.latent.shape[-1] == 8]
    train(backend, train_set, TrainConfig(steps=4, rank=4, alpha=4.0), validate=check)
    assert [step for step, _ in check.history] == [2, 4]
