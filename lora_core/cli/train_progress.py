"""The progress of a `lora-lab train` run on rank 0: a tqdm bar, optional TensorBoard, step times."""

from __future__ import annotations

import time
from pathlib import Path

from ..training.trainer import StepReport
from .config import RunConfig


class Progress:
    """tqdm bar, optional TensorBoard, step times (rank 0)."""

    def __init__(self, config: RunConfig, out_dir: Path, start_step: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=config.train.steps, initial=start_step, desc="lora-lab train", unit="step")
        self.writer = None
        if config.output.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        self.times: list[float] = []
        self.last = time.perf_counter()

    def step(self, report: StepReport) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{report.loss:.4f}", lr=f"{report.lr:.2e}")
        if self.writer is not None:
            self.writer.add_scalar("loss", report.loss, report.step)
            self.writer.add_scalar("lr", report.lr, report.step)
            if report.val_loss is not None:
                self.writer.add_scalar("val_loss", report.val_loss, report.step)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
