"""A run's files in models/loras: periodic and partial saves (<name>_stepNNNNN.safetensors with its training
state beside it) and the resume_from path that points back at one of them."""

from __future__ import annotations

import logging
from pathlib import Path

from ..lora_core.errors import TrainingError
from ..lora_core.files.lora_file import save_lora_file
from ..lora_core.training.state import (TrainState, existing_state_path, is_state_file, load_train_state,
                                     save_train_state, state_path)
from .comfy_paths import loras_directories, resolve_in_loras, unused_lora_path

log = logging.getLogger("lora_lab")


def save_step(lora, state: TrainState | None, name: str, step: int) -> Path:
    """<name>_stepNNNNN.safetensors (never overwriting) and, when given, its .state beside it."""
    path = unused_lora_path(f"{name}_step{step:05d}")
    save_lora_file(path, lora.state_dict(), {**lora.metadata, "ss_output_name": path.stem})
    if state is not None:
        save_train_state(state_path(path), state)
    return path


def resumable_states() -> list[str]:
    """Training states under the loras folders, as names relative to their folder (resume_from's dropdown)."""
    names = set()
    for root in loras_directories():
        for path in root.rglob("*") if root.is_dir() else []:
            if is_state_file(path) and path.is_file():
                names.add(path.relative_to(root).as_posix())
    return sorted(names)


def resolve_resume(resume_from: str) -> Path | None:
    """The training-state file named by resume_from, under models/loras: a LoRA or its state."""
    text = resume_from.strip()
    if not text:
        return None
    path = resolve_in_loras(text, "resume_from")
    if not is_state_file(path):
        if not path.exists() and not path.name.endswith(".safetensors"):
            path = path.with_name(path.name + ".safetensors")
        state = existing_state_path(path)
        if not state.exists():
            raise TrainingError(
                f"resume_from: no training state beside {path} (expected {state.name}). Only LoRAs written by "
                "save_every, cancel, a NaN or out-of-memory stop have one; a LoRA alone cannot continue a run exactly.")
        path = state
    if not path.exists():
        raise TrainingError(f"resume_from: {path} does not exist")
    return path


def load_resume(resume_from: str) -> TrainState | None:
    path = resolve_resume(resume_from)
    if path is None:
        return None
    import torch

    with torch.inference_mode(False):  # its tensors become optimizer state that is updated in place
        state = load_train_state(path)
    log.info("LoRA Lab: resuming from %s (step %d)", path, state.step)
    return state
