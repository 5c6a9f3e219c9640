"""How much device memory a training step needs, to ask the host's memory manager for before loading.

Activations scale with what the host estimates for one inference forward of the same batch. Measured on
ComfyUI's SD1.5 (bench/training_memory.py, 64-256 px, batch 1-4): a forward keeps 3.2-3.5x that estimate
for backward without checkpointing, and 0.24-0.27x with it (block inputs only). On top comes the transient
of backward itself (about one inference forward), and with checkpointing the one block being recomputed:
hence 4.0x and 1.5x. `partial` checkpointing keeps at most its budget of the activations off keeps (3.2-3.5x)
on top of what full needs: 1.5x + budget x 3.5x (2.4x at the default 0.25). The LoRA needs its fp32 weights, their gradients and the optimizer state (the chosen
optimizer's own size: OptimizerSpec.state_slots, from AdamW8bit's 0.55 to Prodigy's 4 values per weight).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..adapters.algorithms import new_adapter
from .backend import Backend
from .checkpoint_modes import checkpointing_mode
from .run_setup import roots, target_names

if TYPE_CHECKING:
    from .trainer import TrainConfig

ACTIVATIONS_KEPT = 4.0
ACTIVATIONS_CHECKPOINTED = 1.5
ACTIVATIONS_SAVED = 3.5  # of ACTIVATIONS_KEPT, what autograd keeps (the rest is backward's transient)


def activation_factor(checkpointing: bool | str, budget: float = 0.25) -> float:
    """Activation memory of a step per inference-forward estimate, for a checkpointing mode (or legacy bool)."""
    mode = checkpointing_mode(checkpointing)
    if mode == "off":
        return ACTIVATIONS_KEPT
    if mode == "full":
        return ACTIVATIONS_CHECKPOINTED
    return min(ACTIVATIONS_KEPT, ACTIVATIONS_CHECKPOINTED + budget * ACTIVATIONS_SAVED)


def training_memory(inference_bytes: float, checkpointing: bool | str, lora_params: int, optimizer_slots: float = 2.0,
                    budget: float = 0.25) -> int:
    """Bytes for one step: inference_bytes is the host's estimate for a forward of the same batch."""
    activations = inference_bytes * activation_factor(checkpointing, budget)
    lora = lora_params * 4 * (2 + optimizer_slots)  # fp32 weight + grad + optimizer state slots
    return int(activations + lora)


def adapter_parameter_count(backend: Backend, config: TrainConfig) -> int:
    """Trainable values the run will have, for the memory plan, without allocating them: each adapter is built on
    the meta device from its layer's geometry. DoRA reads its layer's weight norms when built, so it is counted
    as its LoRA plus one magnitude per channel of its axis."""
    trees = roots(backend, config)
    modules = {(f"{c}:{n}" if c else n): m for c, tree in trees.items() for n, m in tree.named_modules()}
    algorithm = "lora" if config.algorithm == "dora" else config.algorithm
    options = {} if config.algorithm == "dora" else config.algorithm_options
    total = 0
    for name in target_names(backend, config):
        with torch.device("meta"):
            adapter = new_adapter(modules[name], config.rank, config.alpha, 0.0, torch.Generator(), algorithm,
                                  None, name, **options)
        total += sum(p.numel() for p in adapter.parameters())
        if config.algorithm == "dora":
            geo = adapter.geometry
            total += geo.out_features if config.algorithm_options.get("axis", "input") == "output" else geo.in_features
    return total
