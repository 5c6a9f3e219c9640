"""Mixed precision: autocast for bf16/fp16, and loss scaling (GradScaler) for fp16 only.

LoRA weights stay fp32 (master copy) in every mode; only the compute runs in the low precision.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import TrainingError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast context for the forward pass (no-op for fp32)."""
    if precision not in _DTYPES:
        raise TrainingError(f"unknown precision {precision!r}: use fp32, bf16 or fp16")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16/fp32 need none (a disabled scaler is a no-op)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
