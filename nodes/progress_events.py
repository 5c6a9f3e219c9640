"""Live training events for the browser (and any other websocket client of ComfyUI).

Two JSON messages, pushed with ``PromptServer.instance.send_sync`` to the client that queued the prompt:

``lora_lab.progress``::

    {"node_id": "11", "prompt_id": "…", "step": 120, "total": 500, "loss": 0.0841, "lr": 0.0001,
     "val_loss": null, "elapsed": 61.2,
     "points": [[118, 0.0902, 0.0001, null, 60.3], [119, …], [120, 0.0841, 0.0001, null, 61.2]]}

    step/total/loss/lr/val_loss describe the latest optimizer step. Events are throttled (at most one per
    ``ProgressStream.interval`` seconds, the last one always sent), so ``points`` carries every step since the
    previous event as ``[step, loss, lr, val_loss, elapsed]``: a client that keeps them has the whole curve.
    A two-expert run (Wan 2.2 A14B) adds the expert each step trained, ``"high_noise"`` or ``"low_noise"``, as a
    sixth entry of its points and as ``"expert"`` of the event.
    ``elapsed`` is seconds since the run started, on the server's clock (steps/s and ETA come from it).
    Non-finite numbers are sent as null (JSON has no NaN).

``lora_lab.sample``::

    {"node_id": "11", "prompt_id": "…", "step": 200,
     "image": {"filename": "…png", "subfolder": "lora_lab", "type": "temp"}}

    The image is a file in ComfyUI's temp folder, fetched like any preview:
    ``GET /view?filename=…&subfolder=…&type=temp``.

Nothing here imports ComfyUI at module level: the payloads and the throttle are tested without it.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

PROGRESS_EVENT = "lora_lab.progress"
SAMPLE_EVENT = "lora_lab.sample"

Send = Callable[[str, dict], None]


class StepLike(Protocol):
    """The fields of ``lora_core.trainer.StepReport`` that the events use."""

    step: int
    total: int
    loss: float
    lr: float
    val_loss: float | None


def _number(value: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def step_point(report: StepLike, elapsed: float) -> list:
    """One step as the ``points`` entry ``[step, loss, lr, val_loss, elapsed]`` (``+ [expert]`` with two experts)."""
    point = [int(report.step), _number(report.loss), _number(report.lr),
             _number(getattr(report, "val_loss", None)), round(float(elapsed), 3)]
    expert = getattr(report, "expert", "")
    return point + [str(expert)] if expert else point


def progress_payload(report: StepLike, node_id: str, prompt_id: str | None, *, elapsed: float = 0.0,
                     points: list[list] | None = None) -> dict:
    """The ``lora_lab.progress`` message for the latest step ``report`` (``points`` default: just that step)."""
    point = step_point(report, elapsed)
    payload = {
        "node_id": str(node_id), "prompt_id": prompt_id, "step": point[0], "total": int(report.total),
        "loss": point[1], "lr": point[2], "val_loss": point[3], "elapsed": point[4],
        "points": points if points is not None else [point],
    }
    if len(point) > 5:
        payload["expert"] = point[5]
    return payload


def sample_payload(step: int, image_ref: dict, node_id: str, prompt_id: str | None) -> dict:
    """The ``lora_lab.sample`` message; ``image_ref`` is {"filename", "subfolder", "type"} as /view takes it."""
    return {"node_id": str(node_id), "prompt_id": prompt_id, "step": int(step), "image": dict(image_ref)}


def start_timer(delay: float, callback: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(delay, callback)
    timer.daemon = True
    timer.start()
    return timer


class ProgressStream:
    """Turns a run's per-step reports into throttled ``lora_lab.progress`` events.

    The first step is sent at once; later ones are batched and sent at most every ``interval`` seconds, and a
    timer sends what is left when the steps stop (the run ended, or was cancelled), so nothing is lost and a
    fast run on a GPU sends a few events per second whatever its step rate. ``on_point`` (e.g. the run log
    that a reloaded page reads) sees every step. ``clock`` and ``schedule(delay, callback) -> has .cancel()``
    are replaceable for tests.
    """

    def __init__(self, node_id: str, prompt_id: str | None, send: Send, *, interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic, schedule=start_timer,
                 on_point: Callable[[list], None] | None = None):
        self.node_id, self.prompt_id, self.send, self.interval = str(node_id), prompt_id, send, interval
        self.clock, self.schedule, self.on_point = clock, schedule, on_point
        self.started = clock()
        self.sent_events = 0
        self._pending: list[list] = []
        self._latest: StepLike | None = None
        self._last_sent = -math.inf
        self._timer = None
        self._lock = threading.Lock()

    def report(self, report: StepLike) -> None:
        now = self.clock()
        point = step_point(report, now - self.started)
        if self.on_point is not None:
            self.on_point(point)
        with self._lock:
            self._pending.append(point)
            self._latest = report
            due = report.step >= report.total or now - self._last_sent >= self.interval
            if not due and self._timer is None:
                self._timer = self.schedule(max(0.0, self._last_sent + self.interval - now), self.flush)
        if due:
            self.flush()

    def flush(self) -> None:
        """Send the pending steps now (no-op when none)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._pending:
                return
            points, self._pending = self._pending, []
            payload = progress_payload(self._latest, self.node_id, self.prompt_id, elapsed=points[-1][4],
                                       points=points)
            self._last_sent = self.clock()
            self.sent_events += 1
        self.send(PROGRESS_EVENT, payload)


def prompt_server():
    """ComfyUI's PromptServer when one runs (None when nodes are called in-process)."""
    import sys

    return getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)


def running_prompt_id(server) -> str | None:
    """The prompt being executed, as ComfyUI's own progress hook finds it (both 2026 snapshots)."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        get_executing_context = None
    context = get_executing_context() if get_executing_context is not None else None
    if context is not None and getattr(context, "prompt_id", None):
        return context.prompt_id
    return getattr(server, "last_prompt_id", None)


def server_sender(server) -> Send:
    """send_sync to the client that queued the running prompt (all clients when it gave no id), like ComfyUI's
    own progress messages. The id is taken now: a timer may flush after the next prompt has started."""
    client_id = getattr(server, "client_id", None)
    return lambda event, data: server.send_sync(event, data, client_id)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def save_sample_image(image, directory: str | Path, prompt_id: str | None, node_id: str, step: int) -> dict:
    """Write a sample (PIL image, or an IMAGE tensor [H,W,C] / [1,H,W,C] in 0..1) as PNG under
    ``directory/lora_lab``; returns the /view reference of a temp-folder file."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        import numpy as np

        array = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        array = array[0] if array.ndim == 4 else array
        image = Image.fromarray((array.clip(0, 1) * 255).round().astype("uint8"))
    folder = Path(directory) / "lora_lab"
    folder.mkdir(parents=True, exist_ok=True)
    name = _UNSAFE.sub("_", f"sample_{(prompt_id or 'run')[:12]}_{node_id}_{int(step):06d}") + ".png"
    image.save(folder / name, compress_level=4)  # temp previews: a new name per sample, nothing to replace
    return {"filename": name, "subfolder": "lora_lab", "type": "temp"}


def send_sample(image, step: int, node_id: str, prompt_id: str | None = None) -> dict | None:
    """Save a sample preview to ComfyUI's temp folder and push ``lora_lab.sample``; returns the payload
    (None when no server runs, e.g. nodes called in-process)."""
    server = prompt_server()
    if server is None:
        return None
    import folder_paths

    prompt_id = prompt_id or running_prompt_id(server)
    ref = save_sample_image(image, folder_paths.get_temp_directory(), prompt_id, node_id, step)
    payload = sample_payload(step, ref, node_id, prompt_id)
    server_sender(server)(SAMPLE_EVENT, payload)
    return payload
