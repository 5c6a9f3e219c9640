"""The loss, noise and weighting options of a run (all off by default: the model's native MSE)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TrainingError

LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")


@dataclass(frozen=True)
class LossOptions:
    loss_type: str = "l2"
    huber_c: float = 0.1  # kohya's defaults
    huber_scale: float = 1.0
    huber_schedule: str = "snr"
    min_snr_gamma: float = 0.0  # 0 = off; 5 is the paper's value
    debiased_estimation: bool = False
    noise_offset: float = 0.0  # 0 = off; 0.05-0.1 is common
    adaptive_noise_scale: float = 0.0  # kohya: offset + scale * |channel mean of the latent|

    def check(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise TrainingError(f"unknown loss_type {self.loss_type!r}: use one of {', '.join(LOSS_TYPES)}")
        if self.huber_schedule not in HUBER_SCHEDULES:
            raise TrainingError(f"unknown huber_schedule {self.huber_schedule!r}: use one of {', '.join(HUBER_SCHEDULES)}")
        if self.loss_type in ("huber", "smooth_l1") and not 0 < self.huber_c <= 1:
            raise TrainingError(f"huber_c must be in (0, 1], got {self.huber_c}")
        if self.min_snr_gamma < 0 or self.noise_offset < 0:
            raise TrainingError("min_snr_gamma and noise_offset must be >= 0")
