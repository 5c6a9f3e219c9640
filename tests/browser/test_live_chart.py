"""The live training chart in the Train LoRA node, in chromium, against a real ComfyUI training a random SD1.5.

What a user does: open the example workflow, point it at a model and a dataset, press Run, watch the chart,
press Cancel; plus a reload during a run, and a burst of 10,000 events from the server."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .browser import REPO_ROOT

EXAMPLE = REPO_ROOT / "example_workflows" / "SD1.5 LoRA training.json"
DONE = "['done', 'error', 'cancelled', 'stopped']"


def _ids(workflow: dict) -> dict[str, int]:
    return {node["type"]: node["id"] for node in workflow["nodes"]}


def _chart(page, node_id: int) -> dict:
    return page.evaluate("""(id) => { const c = app.graph.getNodeById(id).loraLabChart, s = c.series;
        return {status: c.status, message: c.message, length: s.length, lastStep: s.lastStep, total: s.total,
                promptId: s.promptId, received: c.received, events: c.events, draws: c.draws, drawn: c.drawnPoints,
                last: s.length ? [s.step.at(-1), s.loss.at(-1), s.lr.at(-1)] : null,
                header: c.header.textContent, val: s.val, visible: c.el.isConnected && c.el.offsetHeight > 0 && c.canvas.width > 0}; }""",
                         node_id)


VAL_COLOR = (0xF5, 0xA5, 0x24)  # web/chart_draw.js COLORS.val


def _color_pixels(page, node_id: int, rgb: tuple[int, int, int], tolerance: int = 24) -> int:
    """How many pixels of the chart's canvas have this colour (what the user sees of that curve)."""
    return page.evaluate("""([id, rgb, tol]) => {
        const c = app.graph.getNodeById(id).loraLabChart.canvas;
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4) {
            if (Math.abs(data[i] - rgb[0]) <= tol && Math.abs(data[i + 1] - rgb[1]) <= tol
                && Math.abs(data[i + 2] - rgb[2]) <= tol) n += 1;
        }
        return n;
    }""", [node_id, list(rgb), tolerance])


def _prepare(comfy_page, dataset_dir: Path, steps: int, name: str, validation_every: int = 0) -> dict[str, int]:
    """Open the SD1.5 example (its checkpoint name is the random test SD1.5 here) and set it up as a user would
    for a small CPU run (validation_every > 0: one of the images held out and evaluated that often)."""
    workflow = json.loads(EXAMPLE.read_text())
    comfy_page.load_workflow(workflow)
    ids = _ids(workflow)
    values = {
        ids["LoraLabDataset"]: {"folder": dataset_dir.name, "resolution": 64,
                                "validation": 1.0 if validation_every else 0.0},
        ids["LoraLabTrain"]: {"steps": steps, "rank": 4, "alpha": 4.0, "lr_schedule": "cosine", "warmup_steps": 3,
                              "precision": "fp32", "gradient_checkpointing": False, "output_name": name,
                              "learning_rate": 1e-3, "validation_every": validation_every},
        ids["LoraLabSaveLora"]: {"name": name},
        ids["EmptyLatentImage"]: {"width": 64, "height": 64},
        ids["KSampler"]: {"steps": 1},
    }
    comfy_page.page.evaluate("""(values) => {
        for (const [id, named] of Object.entries(values)) {
            const node = app.graph.getNodeById(Number(id));
            for (const [name, value] of Object.entries(named)) {
                const widget = node.widgets.find(w => w.name === name);
                if (!widget) throw new Error(`${node.type} has no widget ${name}`);
                widget.value = value;
                widget.callback?.(value, app.canvas, node);
            }
        }
    }""", {str(k): v for k, v in values.items()})
    comfy_page.focus_node(ids["LoraLabTrain"], 1.0)  # the chart draws only while it is on screen
    return ids


def _watch(page, node_id: int) -> None:
    """Record, after each lora_lab.progress event has been drawn, the steps received so far (counted from the
    events themselves), the chart's drawn point count and a hash of the canvas pixels."""
    page.evaluate("""(id) => {
        const api = window.comfyAPI.api.api;
        window.__ll = {steps: new Set(), val: [], snaps: []};
        api.addEventListener('lora_lab.progress', ({detail}) => {
            if (String(detail.node_id) !== String(id)) return;
            for (const p of detail.points) {
                __ll.steps.add(p[0]);
                if (p[3] !== null) __ll.val.push([p[0], p[3]]);
            }
            requestAnimationFrame(() => requestAnimationFrame(() => {
                const chart = app.graph.getNodeById(id).loraLabChart, c = chart.canvas;
                const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let hash = 0;
                for (let i = 0; i < data.length; i += 4) hash = (hash * 31 + data[i] + 3 * data[i + 1] + 7 * data[i + 2]) >>> 0;
                __ll.snaps.push({received: __ll.steps.size, drawn: chart.drawnPoints, hash, lastStep: chart.series.lastStep});
            }));
        });
    }""", node_id)


def _wait_status(comfy_page, node_id: int, timeout_s: float) -> dict:
    comfy_page.page.wait_for_function(f"(id) => {DONE}.includes(app.graph.getNodeById(id).loraLabChart.status)",
                                      arg=node_id, timeout=timeout_s * 1000)
    return _chart(comfy_page.page, node_id)


@pytest.fixture(autouse=True)
def _leave_server_idle(browser_server):
    """Whatever happens in a test, the next one starts with an idle server."""
    yield
    browser_server.interrupt()
    _wait_queue_empty(browser_server)


def _wait_queue_empty(server, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue = server.get("/queue")
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        time.sleep(0.5)
    raise TimeoutError("the ComfyUI queue did not empty")


def test_chart_follows_a_real_training_run_and_stays(comfy_page, browser_server, dataset_dir, loras_dir):
    page, steps = comfy_page.page, 16
    ids = _prepare(comfy_page, dataset_dir, steps, "browser_live", validation_every=4)
    train = ids["LoraLabTrain"]
    assert not comfy_page.missing_node_dialog() and not comfy_page.page_errors
    _watch(page, train)
    page.locator("[data-testid='queue-button']").first.click()  # the Run button

    page.wait_for_function("(id) => app.graph.getNodeById(id).loraLabChart.series.length >= 10", arg=train,
                           timeout=900_000)
    comfy_page.focus_node(train, 1.0)
    comfy_page.screenshot("live-chart-mid-run", node_id=train)
    state = _wait_status(comfy_page, train, 900)
    assert state["status"] == "done", f"{state}\n{browser_server.log_tail()}"

    snaps = page.evaluate("window.__ll.snaps")
    comfy_page.write_json("live-chart-snapshots", snaps)
    assert page.evaluate("window.__ll.steps.size") == steps
    assert len(snaps) >= 3, snaps
    assert all(s["drawn"] == s["received"] for s in snaps), snaps  # every received step is drawn
    changed = [b["hash"] != a["hash"] for a, b in zip(snaps, snaps[1:]) if b["received"] > a["received"]]
    assert changed and all(changed), snaps  # the pixels change with every new step
    assert (state["length"], state["drawn"], state["lastStep"], state["total"]) == (steps, steps, steps, steps)
    assert state["visible"] and "done" in state["header"]
    # Validation loss: every value the server computed is on the chart, drawn in its colour, and in the header.
    received_val = page.evaluate("window.__ll.val")
    assert [s for s, _ in received_val] == [4, 8, 12, 16], received_val
    assert state["val"] == received_val  # the same JSON numbers
    assert _color_pixels(page, train, VAL_COLOR) > 20 and "val " in state["header"]

    # The chart stays after the run, is saved with the workflow, and comes back when the workflow is reopened.
    saved = page.evaluate("(id) => app.graph.serialize().nodes.find(n => n.id === id).properties", train)
    assert saved["lora_lab_run"]["status"] == "done" and len(saved["lora_lab_run"]["points"]) == steps
    workflow = page.evaluate("() => app.graph.serialize()")
    comfy_page.load_workflow(json.loads(EXAMPLE.read_text()))
    assert _chart(page, train)["status"] == "idle"
    comfy_page.load_workflow(workflow)
    restored = _chart(page, train)
    assert (restored["status"], restored["length"]) == ("done", steps)
    assert restored["last"] == pytest.approx(state["last"], rel=1e-5)  # saved with 6 significant digits
    assert "lora_lab_run" not in page.evaluate("(id) => app.graph.getNodeById(id).properties", train)
    comfy_page.focus_node(train, 1.0)
    comfy_page.screenshot("live-chart-after-run", node_id=train)

    history = browser_server.get("/history")
    entry = next(e for e in history.values() if e["prompt"][1] == state["promptId"])
    images = entry["outputs"][str(ids["LoraLabLossPlot"])]["images"]
    with urllib.request.urlopen(f"{browser_server.base_url}/view?{urllib.parse.urlencode(images[0])}") as reply:
        (comfy_page.artifacts / "loss-plot.png").write_bytes(reply.read())  # the node's preview image


def test_cancel_from_the_ui_keeps_the_partial_lora_and_stops_the_chart(comfy_page, browser_server, dataset_dir,
                                                                         loras_dir):
    page, name = comfy_page.page, f"browser_cancel_{int(time.time())}"
    ids = _prepare(comfy_page, dataset_dir, 400, name)
    train = ids["LoraLabTrain"]
    page.locator("[data-testid='queue-button']").first.click()
    page.wait_for_function("(id) => app.graph.getNodeById(id).loraLabChart.series.length >= 2", arg=train,
                           timeout=900_000)
    page.locator("button[aria-label='Cancel current run']").first.click()
    state = _wait_status(comfy_page, train, 300)
    assert state["status"] == "cancelled", state
    _wait_queue_empty(browser_server)

    partial = sorted(loras_dir.glob(f"{name}_step[0-9][0-9][0-9][0-9][0-9].safetensors"))  # not .state.
    assert len(partial) == 1, list(loras_dir.iterdir())
    saved_steps = int(partial[0].stem.rsplit("_step", 1)[1])
    # The server's last throttled batch may land just after the interrupt message: wait for it, then nothing more.
    page.wait_for_function("([id, n]) => app.graph.getNodeById(id).loraLabChart.series.lastStep >= n",
                           arg=[train, saved_steps], timeout=30_000)
    page.wait_for_timeout(1500)
    state = _chart(page, train)
    assert (state["lastStep"], state["length"], state["status"]) == (saved_steps, saved_steps, "cancelled"), state
    assert state["lastStep"] < 400 and "cancelled" in state["header"]
    comfy_page.focus_node(train, 1.0)
    comfy_page.screenshot("live-chart-cancelled", node_id=train)


def test_reload_during_a_run_restores_every_step(comfy_page, browser_server):
    """A slow fake run reported exactly like Train LoRA reports (ProgressStream + the server's run log)."""
    page = comfy_page.page
    workflow = json.loads(EXAMPLE.read_text())
    comfy_page.load_workflow(workflow)
    train = _ids(workflow)["LoraLabTrain"]
    comfy_page.focus_node(train, 1.0)
    prompt = {"1": {"class_type": "LoraLabTestEvents", "inputs": {
        "node_id": str(train), "count": 2000, "sample_step": 0, "nonce": int(time.time()), "step_seconds": 0.05}}}
    extra = {"extra_pnginfo": {"workflow": page.evaluate("() => app.graph.serialize()")}}
    client_id = page.evaluate("window.comfyAPI.api.api.clientId")
    prompt_id = browser_server.post("/prompt", {"prompt": prompt, "client_id": client_id, "extra_data": extra})["prompt_id"]
    page.wait_for_function("(id) => app.graph.getNodeById(id).loraLabChart.series.length >= 20", arg=train,
                           timeout=120_000)
    before = _chart(page, train)
    page.reload()  # the frontend restores the open workflow; the run goes on in the server
    page.wait_for_function("(id) => window.app?.graph?.getNodeById(id)?.loraLabChart", arg=train, timeout=180_000)
    comfy_page.focus_node(train, 1.0)
    page.wait_for_function("""([id, n]) => { const c = app.graph.getNodeById(id)?.loraLabChart;
        return c && c.series.lastStep > n + 20 && c.series.length === c.series.lastStep; }""",
                           arg=[train, before["lastStep"]], timeout=120_000)
    after = _chart(page, train)
    assert after["promptId"] == before["promptId"] == prompt_id and after["status"] == "running", after
    comfy_page.screenshot("live-chart-after-reload", node_id=train)
    # The reloaded frontend's Cancel button stays disabled (it missed execution_start): cancel as it would.
    page.evaluate("() => window.comfyAPI.api.api.interrupt()")
    stopped = _wait_status(comfy_page, train, 120)
    assert stopped["status"] == "cancelled" and stopped["lastStep"] < 2000, stopped


def test_burst_of_10000_events_keeps_the_page_responsive(comfy_page, browser_server):
    page, count = comfy_page.page, 10_000
    workflow = json.loads(EXAMPLE.read_text())
    comfy_page.load_workflow(workflow)
    train = _ids(workflow)["LoraLabTrain"]
    comfy_page.focus_node(train, 1.0)
    draws_before = _chart(page, train)["draws"]
    page.evaluate("""() => {  // frame gaps during the burst, for the record (not asserted: no wall-clock tests)
        window.__frames = {n: 0, maxGap: 0, last: performance.now()};
        const tick = (t) => { __frames.maxGap = Math.max(__frames.maxGap, t - __frames.last); __frames.last = t;
                              __frames.n += 1; requestAnimationFrame(tick); };
        requestAnimationFrame(tick);
    }""")
    client_id = page.evaluate("window.comfyAPI.api.api.clientId")
    prompt = {"1": {"class_type": "LoraLabTestEvents",
                    "inputs": {"node_id": str(train), "count": count, "sample_step": count, "nonce": int(time.time()),
                               "step_seconds": 0.0}}}
    prompt_id = browser_server.post("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
    browser_server.wait(prompt_id, timeout=300)

    page.wait_for_function("([id, n]) => app.graph.getNodeById(id).loraLabChart.series.lastStep === n",
                           arg=[train, count], timeout=300_000)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    state = _chart(page, train)
    frames = page.evaluate("window.__frames")
    draws = state["draws"] - draws_before
    comfy_page.write_json("burst", {"events": state["events"], "draws": draws, "frames": frames["n"],
                                    "max_frame_gap_ms": frames["maxGap"]})
    expected_loss = 1.0 / math.sqrt(count) + 0.05 * math.sin(count)  # what LoraLabTestEvents sends last
    assert state["events"] == count and state["length"] == count and state["drawn"] == count
    assert state["last"][0] == count and state["last"][1] == pytest.approx(expected_loss)
    assert state["promptId"] == prompt_id
    # One draw per animation frame, not per event; and the page still answers and repaints.
    assert draws <= frames["n"] + 1 and draws < count / 20
    assert page.evaluate("(id) => app.graph.getNodeById(id).loraLabChart.samples.length", train) == 1
    page.wait_for_function("(id) => [...app.graph.getNodeById(id).loraLabChart.sampleBox.querySelectorAll('img')]"
                           ".every(i => i.complete && i.naturalWidth === 64)", arg=train, timeout=30_000)
    comfy_page.focus_node(train, 1.0)
    comfy_page.screenshot("live-chart-burst", node_id=train)
    assert not comfy_page.page_errors, comfy_page.page_errors


def test_chart_in_the_modern_node_design(comfy_page, browser_server):
    """The same chart when the frontend renders nodes as DOM ('Nodes 2.0', setting Comfy.VueNodes.Enabled)."""
    page, count = comfy_page.page, 300
    browser_server.post("/settings/Comfy.VueNodes.Enabled", True)
    try:
        page.reload()
        page.wait_for_function("(window.app?.extensions ?? []).some(e => e.name === 'LoRALab.TrainChart')",
                               timeout=180_000)
        workflow = json.loads(EXAMPLE.read_text())
        comfy_page.load_workflow(workflow)
        train = _ids(workflow)["LoraLabTrain"]
        comfy_page.focus_node(train, 1.0)
        client_id = page.evaluate("window.comfyAPI.api.api.clientId")
        prompt = {"1": {"class_type": "LoraLabTestEvents", "inputs": {
            "node_id": str(train), "count": count, "sample_step": 0, "nonce": int(time.time()), "step_seconds": 0.0}}}
        browser_server.wait(browser_server.post("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"])
        page.wait_for_function("([id, n]) => app.graph.getNodeById(id).loraLabChart.series.lastStep === n",
                               arg=[train, count], timeout=120_000)
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        state = _chart(page, train)
        assert state["visible"] and state["drawn"] == count, state
        comfy_page.screenshot("live-chart-vue-nodes", node_id=None)
    finally:
        browser_server.post("/settings/Comfy.VueNodes.Enabled", False)
