"""How a run's failures are told apart (NaN is raised by the loop itself), and what of the run is kept: the last
completed step, unless the error struck inside the optimizer update, where the LoRA matches no step."""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

import torch

from ..errors import TrainingCrashed, TrainingOutOfMemory
from .devices import empty_cache
from .frozen_layers import explain_inference_error

if TYPE_CHECKING:
    from .run import TrainResult


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    if isinstance(error, getattr(torch, "OutOfMemoryError", ())) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


OOM_ADVICE = ("lower batch_size (use grad_accumulation instead), the image resolution, or rank; turn "
              "gradient_checkpointing on; or train fewer layers (target_preset 'attention')")


def when_struck(run: Any, when: str) -> str:
    """Where in the run an error struck. Inside the optimizer update the LoRA is partly updated and matches no
    step, so nothing can be kept from memory (the result is None then): the message says so."""
    done = len(run.losses)
    if when == "after":
        return f"after step {done}"
    if run.updating:
        return (f"while updating the LoRA for step {done + 1} (the LoRA was partly updated and matches no step, "
                f"so this run cannot be saved from memory; files save_every wrote stand)")
    return f"during step {done + 1}"


def kept_result(run: Any) -> TrainResult | None:
    return None if run.updating else run.result(interrupted=True)


def crashed(error: BaseException, run: Any, when: str) -> TrainingCrashed:
    """Any unexpected exception: carry the last completed step so the host can save it and its state."""
    return TrainingCrashed(f"training failed {when_struck(run, when)}: {type(error).__name__}: {error}", kept_result(run))


def raise_clearly(error: BaseException, run: Any, when: str) -> None:
    if is_out_of_memory(error):
        run.optimizer.zero_grad(set_to_none=True)
        traceback.clear_frames(error.__traceback__)  # the failed step's activations, held by its frames
        empty_cache(run.device)
        advice = OOM_ADVICE + ("; or validate and preview less often or smaller (validation_every, previews)"
                               if when == "after" else "")
        raise TrainingOutOfMemory(f"out of memory {when_struck(run, when)}; {advice}", kept_result(run)) from error
    clear = explain_inference_error(error)
    if clear is not None:
        raise clear from error
