"""How much device memory a training step needs, to ask the host's memory manager for before loading.

Activations scale with what the host estimates for one inference forward of the same batch: backward keeps
about ACTIVATIONS_KEPT of those without checkpointing, and about ACTIVATIONS_CHECKPOINTED with it (block
inputs plus one block being recomputed). The factors were measured on ComfyUI's SD1.5 with saved-tensor
hooks (bench/training_memory.py). The LoRA needs its fp32 weights, their gradients and the optimizer state.
"""

from __future__ import annotations

ACTIVATIONS_KEPT = 4.0
ACTIVATIONS_CHECKPOINTED = 1.5


def training_memory(inference_bytes: float, checkpointing: bool, lora_params: int, optimizer_slots: int = 2) -> int:
    """Bytes for one step: inference_bytes is the host's estimate for a forward of the same batch."""
    activations = inference_bytes * (ACTIVATIONS_CHECKPOINTED if checkpointing else ACTIVATIONS_KEPT)
    lora = lora_params * 4 * (2 + optimizer_slots)  # fp32 weight + grad + optimizer state slots
    return int(activations + lora)
