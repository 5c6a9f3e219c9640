"""ComfyUI's own "we are training" switch, set for the duration of a Train LoRA run.

Since mid-2026 ComfyUI's models pick inference-only fused kernels unless ``comfy.model_management.in_training``
is set (its native trainer sets it): Lumina 2 / Z-Image's fused RMSNorm+RoPE, Flux's comfy_kitchen RoPE, LTX
and Ernie kernels, INT8 activation folding. Those kernels have no backward, so training must take the eager
paths, exactly as the native trainer does. Older ComfyUI has no such switch and nothing is set there.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import comfy.model_management

_MISSING = object()


@contextlib.contextmanager
def comfy_training_mode() -> Iterator[None]:
    """in_training = True inside, its previous value (or absence) restored on every exit."""
    mm = comfy.model_management
    previous = getattr(mm, "in_training", _MISSING)
    if previous is _MISSING:
        yield
        return
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = previous
