"""Train LoRA's progress: ComfyUI's progress bar and the live chart's events (web/: step, loss, lr, steps/s,
ETA), both throttled so a fast run does not flood the browser's socket."""

from __future__ import annotations

import logging
import time

import comfy.model_management
import comfy.utils

from ..lora_core.training.trainer import StepReport
from .progress_events import ProgressStream, prompt_server, running_prompt_id, server_sender
from .progress_log import RUN_LOG

log = logging.getLogger("lora_lab")


class TrainProgress:
    """Never lets ComfyUI's hook raise on cancel mid-step (the partial LoRA is saved first)."""

    BAR_INTERVAL = 0.25  # seconds between progress-bar updates (the last step is always shown)

    def __init__(self, total: int, node_id: str | None):
        self.bar = comfy.utils.ProgressBar(total)
        self.node_id = node_id
        self.server = prompt_server()
        self.stream = None
        self._bar_time = -1e9
        if self.node_id and self.server is not None:
            prompt_id = running_prompt_id(self.server)
            self.stream = ProgressStream(self.node_id, prompt_id, server_sender(self.server),
                                         on_point=RUN_LOG.start(prompt_id, self.node_id, total))

    def __call__(self, report: StepReport) -> None:
        step, total = report.step, report.total
        text = f"step {step}/{total}  loss {report.loss:.5f}  lr {report.lr:.3g}"
        if report.val_loss is not None:
            text += f"  validation {report.val_loss:.5f}"
        if step == 1 or step == total or step % max(1, total // 20) == 0 or report.val_loss is not None:
            log.info("LoRA Lab: %s", text)
        if self.stream is not None:
            self.stream.report(report)  # a completed step belongs on the chart even when cancel is pending
        if comfy.model_management.processing_interrupted():
            return
        now = time.monotonic()
        if step < total and now - self._bar_time < self.BAR_INTERVAL:
            return
        self._bar_time = now
        self.bar.update_absolute(step, total)
