"""Exponential moving average of the adapter weights (diffusers' EMAModel, with its warm-up of the decay
(1 + n) / (10 + n) capped at `decay`). When on, the averaged weights are the run's result."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def make_ema(params: list[torch.nn.Parameter], decay: float):
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=float(decay), foreach=False)


@contextlib.contextmanager
def ema_weights(ema, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Parameters hold the averaged weights inside; the exact training weights again after."""
    saved = [p.detach().clone() for p in params]
    ema.copy_to(params)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
