"""Exception hierarchy: every bad input or failed run raises one of these, naming the value at fault."""

from __future__ import annotations

from typing import Any


class LoraLabError(Exception):
    """Base class for all errors LoRA Lab raises on purpose."""


class DatasetError(LoraLabError):
    """A dataset folder, image or caption cannot be used."""


class LoraFormatError(LoraLabError):
    """A LoRA file or state dict is malformed or of an unknown format."""


class TrainingError(LoraLabError):
    """Training cannot start or cannot continue (bad config, no targets, ...)."""


class NonFiniteLossError(TrainingError):
    """The loss became nan/inf. `result` holds the last good TrainResult (before the bad update)."""

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


class TrainingOutOfMemory(TrainingError):
    """The device (or host) ran out of memory mid-step. `result` holds the last good TrainResult and its state."""

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result
