"""The live view's event payloads, throttle and run log (no ComfyUI needed)."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from lora_lab.lora_core.training.trainer import StepReport
from lora_lab.nodes.progress_events import (PROGRESS_EVENT, SAMPLE_EVENT, ProgressStream, progress_payload,
                                            sample_payload, save_sample_image)
from lora_lab.nodes.progress_log import RunLog


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_payload_has_the_documented_fields_and_is_strict_json():
    payload = progress_payload(StepReport(7, 50, 0.125, 1e-4, 0.25), "11", "p-1", elapsed=3.5)
    assert payload == {"node_id": "11", "prompt_id": "p-1", "step": 7, "total": 50, "loss": 0.125, "lr": 1e-4,
                       "val_loss": 0.25, "elapsed": 3.5, "points": [[7, 0.125, 1e-4, 0.25, 3.5]]}
    json.dumps(payload, allow_nan=False)


def test_a_two_expert_step_names_its_expert():
    payload = progress_payload(StepReport(7, 50, 0.125, 1e-4, None, expert="low_noise"), "11", "p-1", elapsed=3.5)
    assert payload["expert"] == "low_noise" and payload["points"] == [[7, 0.125, 1e-4, None, 3.5, "low_noise"]]
    json.dumps(payload, allow_nan=False)


def test_non_finite_numbers_become_null():
    payload = progress_payload(StepReport(1, 2, math.nan, math.inf, None), "3", None)
    assert payload["loss"] is None and payload["lr"] is None and payload["val_loss"] is None
    assert payload["points"] == [[1, None, None, None, 0.0]]
    json.dumps(payload, allow_nan=False)  # the browser's JSON.parse rejects NaN: the event would be lost


def test_sample_payload():
    ref = {"filename": "a.png", "subfolder": "lora_lab", "type": "temp"}
    assert sample_payload(200, ref, 11, "p") == {"node_id": "11", "prompt_id": "p", "step": 200, "image": ref}


class HeldTimer:
    """A timer that never fires by itself (the test decides when time has passed)."""

    def cancel(self):
        pass


def _stream(clock, interval=0.25):
    sent, seen = [], []
    stream = ProgressStream("11", "p", lambda event, data: sent.append((event, data)), interval=interval,
                            clock=clock, schedule=lambda delay, callback: HeldTimer(), on_point=seen.append)
    return stream, sent, seen


def test_burst_of_steps_is_batched_into_few_events_with_every_point_once():
    clock = FakeClock()
    stream, sent, seen = _stream(clock)
    total = 10_000
    for step in range(1, total + 1):  # 10,000 steps in one second of (fake) time
        clock.now = 100.0 + step / total
        stream.report(StepReport(step, total, 1.0 / step, 1e-4 * step / total))
    stream.flush()
    assert all(event == PROGRESS_EVENT for event, _ in sent)
    assert 2 <= len(sent) <= 1 + 1 / 0.25 + 1  # leading edge, one per interval, the final step
    steps = [point[0] for _, data in sent for point in data["points"]]
    assert steps == list(range(1, total + 1))
    last = sent[-1][1]
    assert last["step"] == total and last["points"][-1][:3] == [total, 1.0 / total, 1e-4]
    assert [p[0] for p in seen] == steps  # the run log sees every step too
    assert stream.sent_events == len(sent)


def test_first_and_last_steps_are_sent_at_once():
    clock = FakeClock()
    stream, sent, _ = _stream(clock, interval=60)
    stream.report(StepReport(1, 3, 0.5, 1e-4))
    assert [d["step"] for _, d in sent] == [1]
    stream.report(StepReport(2, 3, 0.4, 1e-4))
    assert len(sent) == 1  # throttled; a timer holds it
    stream.report(StepReport(3, 3, 0.3, 1e-4))
    assert [d["step"] for _, d in sent] == [1, 3] and [p[0] for p in sent[1][1]["points"]] == [2, 3]


def test_pending_steps_are_flushed_by_the_timer_when_steps_stop():
    flushed = threading.Event()
    sent = []

    def send(event, data):
        sent.append(data)
        if len(sent) == 2:
            flushed.set()

    stream = ProgressStream("11", "p", send, interval=0.05)
    for step in (1, 2, 3):  # a cancelled run: the last step never reaches total
        stream.report(StepReport(step, 100, 0.1, 1e-4))
    assert flushed.wait(10), "the trailing timer never sent the pending steps"
    assert [p[0] for d in sent for p in d["points"]] == [1, 2, 3] and sent[-1]["step"] == 3


@pytest.mark.parametrize("kind", ["pil", "tensor", "batch"])
def test_save_sample_image(tmp_path, kind):
    pixels = np.linspace(0, 1, 8 * 6 * 3, dtype=np.float32).reshape(8, 6, 3)
    image = {"pil": Image.fromarray((pixels * 255).astype("uint8")), "tensor": torch.from_numpy(pixels),
             "batch": torch.from_numpy(pixels)[None]}[kind]
    ref = save_sample_image(image, tmp_path, "prompt/../x", "12:3", 40)
    assert ref["type"] == "temp" and ref["subfolder"] == "lora_lab" and "/" not in ref["filename"]
    with Image.open(tmp_path / "lora_lab" / ref["filename"]) as saved:
        assert saved.size == (6, 8)
    json.dumps(sample_payload(40, ref, "12:3", "p"))
    assert SAMPLE_EVENT == "lora_lab.sample"


def test_run_log_keeps_the_last_runs_and_filters():
    log = RunLog(max_runs=2)
    add = log.start("p1", "11", 3)
    add([1, 0.5, 1e-4, None, 0.1])
    log.start("p2", "11", 5)([1, 0.4, 1e-4, None, 0.1])
    assert [r["prompt_id"] for r in log.runs(node_id="11")] == ["p1", "p2"]
    assert log.runs(prompt_id="p1")[0]["points"] == [[1, 0.5, 1e-4, None, 0.1]]
    log.start("p3", "12", 5)
    assert [r["prompt_id"] for r in log.runs()] == ["p2", "p3"]  # p1 evicted
    log.start("p2", "11", 5)  # the same node re-run in the same prompt starts over
    assert log.runs(prompt_id="p2")[0]["points"] == []
