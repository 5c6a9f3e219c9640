"""Backward for comfy_kitchen's RoPE ops, which ComfyUI's Flux, Wan, Qwen-Image, Lumina and HiDream call.

comfy_kitchen registers ``apply_rope`` / ``apply_rope1`` as custom ops for inference only: backward through
them fails with "no autograd formula was registered". RoPE multiplies each (even, odd) pair by a 2x2 matrix
F taken from ``freqs_cis``, so its input gradient is F^T applied to the output gradient: the same op with the
last two axes of freqs_cis swapped. Registering that formula changes nothing in inference.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("lora_lab")
_registered = False


def _transposed(freqs_cis: torch.Tensor) -> torch.Tensor:
    return freqs_cis.transpose(-1, -2).contiguous()


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[-1])


def _backward_rope1(ctx, grad: torch.Tensor):
    (freqs_cis,) = ctx.saved_tensors
    return torch.ops.comfy_kitchen.apply_rope1(grad, _transposed(freqs_cis)), None


def _backward_rope(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor):
    (freqs_cis,) = ctx.saved_tensors
    gq, gk = torch.ops.comfy_kitchen.apply_rope(grad_q, grad_k, _transposed(freqs_cis))
    return gq, gk, None


def ensure_rope_autograd() -> bool:
    """Register the formulas once per process; False when comfy_kitchen (or the op) is absent."""
    global _registered
    if _registered:
        return True
    ops = getattr(torch.ops, "comfy_kitchen", None)
    try:
        ops.apply_rope1.default  # noqa: B018  (raises when the op is not defined)
        ops.apply_rope.default  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    for name, backward in (("apply_rope1", _backward_rope1), ("apply_rope", _backward_rope)):
        try:
            torch.library.register_autograd(f"comfy_kitchen::{name}", backward, setup_context=_setup)
        except RuntimeError as error:  # someone registered one already: theirs stands
            log.info("LoRA Lab: comfy_kitchen::%s autograd not registered (%s)", name, error)
    _registered = True
    return True
