"""Exception hierarchy: every bad input surfaces as a LoraLabError subclass naming the culprit."""


class LoraLabError(Exception):
    """Base class for every error LoRA Lab raises on purpose."""


class DatasetError(LoraLabError):
    """The training images or captions cannot be used (missing folder, no readable image, bad resolution)."""


class LoraFormatError(LoraLabError):
    """A LoRA file or state dict is not in a format we can read or write."""


class TrainingError(LoraLabError):
    """Training cannot start or continue (bad config, no target modules, ...)."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN/inf; `.result` holds the last good TrainResult when the trainer sets it."""
