"""What Train LoRA does after each optimizer step besides the progress bar: periodic saves (LoRA and its
training state) and sample previews."""

from __future__ import annotations

import logging
from typing import Callable

from ..lora_core.training.trainer import StepReport

from ..lora_core.training.run import TrainResult
from .previews import Previewer, to_pil
from .run_files import save_step

log = logging.getLogger("lora_lab")


class StepHooks:
    def __init__(self, progress, finished: Callable[[TrainResult], object], name: str, save_every: int,
                 previewer: Previewer | None):
        self.progress, self.finished, self.name = progress, finished, name
        self.save_every, self.previewer = save_every, previewer
        self.saved = []

    def __call__(self, report: StepReport) -> None:
        self.progress(report)
        if self.save_every and report.step % self.save_every == 0 and report.step < report.total:
            snapshot = report.snapshot()
            path = save_step(self.finished(snapshot), snapshot.state, self.name, report.step)
            self.saved.append(path)
            log.info("LoRA Lab: step %d saved to %s (with its training state)", report.step, path)
        if self.previewer is not None:
            image = self.previewer(report)
            if image is not None:
                self.progress.bar.update_absolute(report.step, report.total, ("JPEG", to_pil(image), 768))
