"""What differs between device kinds (cuda, xpu, mps, cpu) for training outside ComfyUI: the default device,
autocast and bf16 support, the device's RNG state and its cache. Inside ComfyUI, model_management decides.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

ACCELERATORS = ("cuda", "xpu", "mps")  # ComfyUI's order of preference


def is_available(kind: str) -> bool:
    """Whether this torch build and machine have a device of `kind` (torch.xpu / torch.backends.mps may be absent)."""
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return xpu is not None and xpu.is_available()
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return mps is not None and mps.is_available()
    return kind == "cpu"


def default_device() -> torch.device:
    """The first accelerator present (cuda, then xpu, then mps), else the CPU."""
    return torch.device(next((kind for kind in ACCELERATORS if is_available(kind)), "cpu"))


def _module(kind: str):
    """torch.cuda / torch.xpu / torch.mps, or None (the CPU's state is torch's global one; others unknown)."""
    return getattr(torch, kind, None) if kind in ACCELERATORS else None


def autocast_available(kind: str) -> bool:
    """torch.amp.is_autocast_available where torch has it (2.4; mps autocast came in 2.5), else cuda, cpu, xpu."""
    check = getattr(torch.amp, "is_autocast_available", None)
    return bool(check(kind)) if check is not None else kind in ("cuda", "cpu", "xpu")


def supports_bf16(device: torch.device) -> bool:
    """bf16 compute: any CPU; CUDA and XPU as they report it; MPS from macOS 14."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "xpu":
        check = getattr(torch.xpu, "is_bf16_supported", None)
        return True if check is None else bool(check())
    if device.type == "mps":
        newer = getattr(torch.backends.mps, "is_macos_or_newer", None)
        return newer is not None and bool(newer(14, 0))
    return True


def get_rng_state(device: torch.device) -> torch.Tensor | None:
    """The device's own generator state (None for the CPU, whose state is torch.get_rng_state())."""
    module = _module(device.type)
    if module is None:
        return None
    return module.get_rng_state() if device.type == "mps" else module.get_rng_state(device)  # one mps device


def set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    module = _module(device.type)
    if module is None:
        return
    if device.type == "mps":
        module.set_rng_state(state)
    else:
        module.set_rng_state(state, device)


@contextlib.contextmanager
def fork_rng(device: torch.device) -> Iterator[None]:
    """torch.random.fork_rng for the CPU and `device` only, whatever its kind (torch's needs the kind named)."""
    cpu, own = torch.get_rng_state(), get_rng_state(device)
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if own is not None:
            set_rng_state(device, own)


def empty_cache(device: torch.device) -> None:
    """Give the caching allocator's free blocks back (after running out of memory)."""
    module = _module(device.type)
    if module is not None and hasattr(module, "empty_cache"):
        module.empty_cache()
