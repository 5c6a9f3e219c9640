"""How a `lora-lab train` run ends early, and what it keeps.

A NaN loss, running out of memory or any crash mid-run (the trainer's NonFiniteLossError, TrainingOutOfMemory,
TrainingCrashed) and Ctrl-C all end with the last completed step saved as <name>_stepNNNNN (its LoRA forms and
its state), then a RunStopped that says what stopped the run, what was kept where, and its exit status.

Ctrl-C does not raise inside the step: the first one asks the run to stop before the next step (the step in
progress completes and is saved); a KeyboardInterrupt in the middle of an optimizer update would leave a
LoRA that matches no step. A second Ctrl-C stops at once, keeping only the files already written.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from ..errors import TrainingError


class CtrlC:
    """Context: while inside it, the first SIGINT sets .requested instead of raising (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None
        self._installed = False

    def __enter__(self) -> CtrlC:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started with Ctrl-C ignored (nohup): keep it so
            return self
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        except ValueError:  # not the main thread: Ctrl-C keeps its usual KeyboardInterrupt
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nlora-lab train: Ctrl-C: stopping after the step in progress to save it "
              "(Ctrl-C again stops at once, without saving it)", file=sys.stderr)


class RunStopped(TrainingError):
    """The run ended before its last step. `saved`: the files written for the last completed step (LoRA forms,
    state); `state`: the state among them, to resume from (None if nothing could be kept)."""

    def __init__(self, reason: str, status: int, steps_done: int, saved: list[Path], why_nothing: str = ""):
        self.reason, self.status, self.steps_done, self.saved = reason, status, steps_done, saved
        self.state = next((p for p in saved if p.suffix == ".state"), None)
        self.why_nothing = why_nothing
        super().__init__(self.describe())

    def describe(self) -> str:
        loras = [str(p) for p in self.saved if p.suffix != ".state"]
        lines = [f"stopped: {self.reason}"]
        if loras:
            lines.append(f"saved the LoRA after step {self.steps_done}: {', '.join(loras)}")
        if self.state is not None:
            lines.append(f"and the state to continue from: {self.state}")
        if self.why_nothing:
            lines.append(self.why_nothing)
        return "\n".join(lines)
