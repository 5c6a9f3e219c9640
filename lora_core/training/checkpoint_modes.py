"""Gradient checkpointing's modes, the old true/false spelling of them, and what a run reports it did.

    off      keep every activation autograd saves (fastest, most memory)
    partial  recompute only the units that hold the most activation memory per unit of recompute cost, until
             what stays kept is at most `checkpoint_budget` of what `off` keeps (checkpoint_plan.py)
    full     recompute every unit: each keeps only its inputs (least memory, one more forward per step)

Saved workflows, API prompts and configs from before the modes carry a boolean: true is `full` (what it meant)
and false is `off`.
"""

from __future__ import annotations

from ..errors import TrainingError

MODES = ("off", "partial", "full")


def checkpointing_mode(value: bool | str) -> str:
    """The mode for a setting: one of MODES, or a legacy boolean."""
    if isinstance(value, bool):
        return "full" if value else "off"
    if value in MODES:
        return value
    raise TrainingError(f"gradient_checkpointing = {value!r}; choose one of {', '.join(MODES)} (or true/false: full/off)")


def check_budget(budget: float) -> None:
    if not 0.0 <= budget <= 1.0:
        raise TrainingError(f"checkpoint_budget must be in [0, 1] (the share of off's activations partial may keep), "
                            f"got {budget}")


def outcome(mode: str, units: int, recomputed: int, kept_share: float | None, model: str) -> tuple[str, str | None]:
    """What checkpointing did, for the result and the metadata, and a warning when it wrapped nothing (an
    architecture it does not know): said, not hidden."""
    if mode == "off":
        return "off", None
    if not units:
        return ("requested, but no block was found to wrap",
                f"gradient checkpointing wrapped nothing: no block list was found in {model}, so this run keeps every "
                "activation (as with checkpointing off)")
    if mode == "full":
        return f"full ({units} units)", None
    kept = "" if kept_share is None else f", {kept_share:.0%} of activations kept"
    return f"partial ({recomputed} of {units} units recomputed{kept})", None

