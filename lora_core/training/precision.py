"""Mixed precision: which dtype the model's layers really compute in, and autocast for bf16/fp16.

LoRA weights stay fp32 (master copy) in every mode. The compute dtype is the autocast dtype when one is
asked for, else the model's own compute dtype (a model stored and run in fp16 computes in fp16 without
any autocast); fp16 compute is what needs loss scaling (trainer.py).
"""

from __future__ import annotations

import contextlib

import torch

from .devices import autocast_available, supports_bf16
from ..errors import TrainingError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(DTYPES)


def check_precision(precision: str) -> None:
    if precision not in DTYPES:
        raise TrainingError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast context for the forward pass (no-op for fp32)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    if not autocast_available(device.type):  # torch would only warn and run in fp32
        raise TrainingError(f"{precision} autocast is not available on {device.type} with torch {torch.__version__}: "
                            f"use precision fp32 (the model's own dtype computes) or a newer torch")
    if precision == "bf16" and not supports_bf16(device):
        raise TrainingError(f"this {device.type} device cannot compute in bf16: use precision fp16 or fp32")
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def compute_dtype(precision: str, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype, or the model's own when no autocast is asked for."""
    check_precision(precision)
    return model_dtype if precision == "fp32" else DTYPES[precision]


def dtype_name(dtype: torch.dtype) -> str:
    names = {v: k for k, v in DTYPES.items()}
    return names.get(dtype, str(dtype).replace("torch.", ""))
