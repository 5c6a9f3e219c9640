"""Validation loss: the native loss of held-out samples at fixed noise and fixed noise levels, every N steps.

train(validate=ValidationLoss(...)) calls it after each step with the adapters attached. The noise, the
noise levels and any adapter dropout are the same at every evaluation, so the curve moves only when the
LoRA does (and two evaluations of the same LoRA give the same value). It draws from none of the run's
random generators (torch's global ones are forked), so a run with validation trains exactly as one without.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from .backend import Backend
from .devices import fork_rng
from ..errors import TrainingError
from .objective import diffusion_loss
from .precision import autocast
from ..data.samples import TrainSample, batch_masks, draw_cond

DEFAULT_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)  # u: 0 clean .. 1 pure noise


class ValidationLoss:
    """validate(step) -> mean loss every `every` steps (and at `last_step`), else None; history keeps (step, loss)."""

    def __init__(self, backend: Backend, samples: Sequence[TrainSample], every: int, *, last_step: int = 0,
                 levels: Sequence[float] = DEFAULT_LEVELS, seed: int = 0, batch_size: int = 1,
                 precision: str = "fp32"):
        if not samples:
            raise TrainingError("validation needs at least one held-out sample")
        if every < 0:
            raise TrainingError(f"validation interval must be >= 0 steps, got {every}")
        self.backend, self.samples, self.every, self.last_step = backend, list(samples), every, last_step
        self.levels = [float(u) for u in levels]
        self.seed, self.batch_size, self.precision = seed, max(1, batch_size), precision
        generator = torch.Generator().manual_seed(seed)
        # one fixed noise tensor per (sample, level), drawn once
        self.noise = [[torch.randn(s.latent.shape, generator=generator) for _ in self.levels] for s in self.samples]
        self.history: list[tuple[int, float]] = []

    def __call__(self, step: int) -> float | None:
        due = self.every > 0 and step % self.every == 0 or step == self.last_step
        if not due:
            return None
        value = self.evaluate()
        self.history.append((step, value))
        return value

    def evaluate(self) -> float:
        """Mean loss over every held-out sample at every level (no grad; RNG state untouched)."""
        device = torch.device(self.backend.device)
        total, n = 0.0, 0
        with fork_rng(device), torch.no_grad():
            torch.manual_seed(self.seed)  # adapter dropout, if any, draws the same masks every time
            fixed = torch.Generator().manual_seed(self.seed)
            for batch in self._batches():
                x0 = torch.stack([self.samples[i].latent for i, _ in batch]).float().to(device)
                noise = torch.stack([self.noise[i][k] for i, k in batch]).to(device)
                u = torch.tensor([self.levels[k] for _, k in batch])
                conds = [draw_cond(self.samples[i].cond, fixed) for i, _ in batch]
                masks = batch_masks([self.samples[i] for i, _ in batch])  # the loss training minimises
                with autocast(self.precision, device):
                    losses = diffusion_loss(self.backend, x0, noise, u, conds, masks=masks)
                total += float(losses.float().sum())
                n += len(batch)
        return total / n

    def _batches(self) -> list[list[tuple[int, int]]]:
        """(sample, level) pairs grouped by latent shape, in fixed order, at most batch_size per forward."""
        groups: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
        for i, sample in enumerate(self.samples):
            for k in range(len(self.levels)):
                groups[tuple(sample.latent.shape)].append((i, k))
        return [pairs[j:j + self.batch_size] for pairs in groups.values() for j in range(0, len(pairs), self.batch_size)]
