"""Debian's chromium, driven by Python playwright, on a real ComfyUI page.

Never downloads a browser: the system chromium is launched through ``executable_path`` (override with
$LORA_LAB_CHROMIUM). Nothing here imports playwright at module level, so the tests can skip when it is absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# First-run dialogs (template browser, tours) would cover the canvas; a returning user has seen them.
USER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Validation.Workflows": True, "Comfy.Minimap.Visible": False}


def chromium_path() -> str | None:
    for candidate in (os.environ.get("LORA_LAB_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def why_no_browser() -> str | None:
    """A human reason why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs Python playwright in the python running pytest (pip install playwright; no browser download)"
    if chromium_path() is None:
        return "needs a chromium binary (apt-get install chromium, or set LORA_LAB_CHROMIUM)"
    return None


def artifacts_dir(label: str) -> Path:
    """Screenshots and measurements: $LORA_LAB_BROWSER_ARTIFACTS/<label> or <repo>/out/browser/<label>."""
    base = Path(os.environ.get("LORA_LAB_BROWSER_ARTIFACTS", REPO_ROOT / "out" / "browser"))
    path = base / label
    path.mkdir(parents=True, exist_ok=True)
    return path


class ComfyPage:
    """One browser tab on the ComfyUI server, with the helpers the tests share."""

    def __init__(self, page, server, artifacts: Path):
        self.page, self.server, self.artifacts = page, server, artifacts
        self.console: list[str] = []
        self.page_errors: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def open(self) -> None:
        self.server.post("/settings", USER_SETTINGS)
        self.page.goto(self.server.base_url)
        self.page.wait_for_function("window.app?.graph && window.app.extensionManager && window.comfyAPI",
                                    timeout=180_000)
        # Extensions are imported asynchronously after the app exists: wait for ours.
        self.page.wait_for_function("(window.app.extensions ?? []).some(e => e.name === 'LoRALab.TrainChart')",
                                    timeout=60_000)
        self.close_dialogs()

    @property
    def frontend_version(self) -> str:
        return self.page.evaluate("window.__COMFYUI_FRONTEND_VERSION__ ?? 'unknown'")

    def close_dialogs(self) -> None:
        for _ in range(3):
            dialogs = self.page.locator(".p-dialog")
            if dialogs.count() == 0:
                return
            close = self.page.locator(".p-dialog .p-dialog-close-button, .p-dialog button[aria-label='Close']")
            if close.count():
                close.first.click()
            else:
                self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)

    def load_workflow(self, workflow: dict) -> None:
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def graph_report(self) -> dict:
        """Every node of the shown graph: type, box, the frontend's own minimum size, widgets."""
        return self.page.evaluate("""() => {
            const LG = window.LiteGraph;
            const nodes = app.graph._nodes.map(n => ({
                id: n.id, type: n.type, title: n.title, registered: !!LG.registered_node_types[n.type],
                pos: [...n.pos], size: [...n.size], min: [...n.computeSize()], collapsed: !!n.flags?.collapsed,
                has_errors: !!n.has_errors,
                widgets: (n.widgets ?? []).map(w => ({name: w.name, type: w.type, value: w.serialize === false ? null : w.value,
                    serialize: w.serialize !== false, y: w.y ?? w.last_y ?? 0,
                    visible: n.isWidgetVisible ? n.isWidgetVisible(w) : !w.hidden,  // 1.49 folds 'advanced' ones
                    height: w.computedHeight ?? (w.computeSize ? w.computeSize(n.size[0])[1] : LG.NODE_WIDGET_HEIGHT)})),
            }));
            return {nodes, title_height: LG.NODE_TITLE_HEIGHT};
        }""")

    def missing_node_dialog(self) -> bool:
        text = self.page.locator(".p-dialog").all_inner_texts()
        return any("missing" in t.lower() for t in text)

    def screenshot(self, name: str, node_id: int | None = None) -> Path:
        path = self.artifacts / f"{name}.png"
        if node_id is None:
            self.page.screenshot(path=str(path))
        else:
            self.page.screenshot(path=str(path), clip=self.node_clip(node_id))
        return path

    def node_clip(self, node_id: int, pad: int = 12) -> dict:
        """The node's box on screen (title bar included), for a screenshot of just that node."""
        box = self.page.evaluate("""(id) => {
            const n = app.graph.getNodeById(id), c = app.canvas, ds = c.ds, r = c.canvas.getBoundingClientRect();
            const th = LiteGraph.NODE_TITLE_HEIGHT;
            return {x: r.left + (n.pos[0] + ds.offset[0]) * ds.scale, y: r.top + (n.pos[1] - th + ds.offset[1]) * ds.scale,
                    width: n.size[0] * ds.scale, height: (n.size[1] + th) * ds.scale};
        }""", node_id)
        return {"x": max(0, box["x"] - pad), "y": max(0, box["y"] - pad),
                "width": box["width"] + 2 * pad, "height": box["height"] + 2 * pad}

    def focus_node(self, node_id: int, scale: float = 1.0) -> None:
        """Center the canvas on a node at a given zoom."""
        self.page.evaluate("""([id, scale]) => {
            const n = app.graph.getNodeById(id), c = app.canvas, ds = c.ds, r = c.canvas.getBoundingClientRect();
            ds.scale = scale;
            ds.offset[0] = r.width / (2 * scale) - n.pos[0] - n.size[0] / 2;
            ds.offset[1] = r.height / (2 * scale) - n.pos[1] - n.size[1] / 2;
            c.setDirty(true, true);
        }""", [node_id, scale])
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def fit_graph(self, margin: int = 40) -> dict:
        """Zoom and pan so every node and group fits the canvas; returns the graph's box on screen."""
        return self.page.evaluate("""(margin) => {
            const c = app.canvas, r = c.canvas.getBoundingClientRect(), th = LiteGraph.NODE_TITLE_HEIGHT;
            let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
            const boxes = [...app.graph._nodes.map(n => [n.pos[0], n.pos[1] - th, n.size[0], n.size[1] + th]),
                           ...(app.graph._groups ?? app.graph.groups ?? []).map(g => g._bounding ?? g.bounding)];
            for (const b of boxes) {
                x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]);
                x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]);
            }
            const top = 90;  // below the menu bar
            const scale = Math.min((r.width - 2 * margin - 60) / (x1 - x0), (r.height - top - 2 * margin) / (y1 - y0));
            c.ds.scale = scale;
            c.ds.offset[0] = (60 + margin) / scale - x0;
            c.ds.offset[1] = (top + margin) / scale - y0;
            c.setDirty(true, true);
            return {x: r.left + 60 + margin / 2, y: r.top + top + margin / 2,
                    width: (x1 - x0) * scale + margin, height: (y1 - y0) * scale + margin};
        }""", margin)

    def write_json(self, name: str, data) -> Path:
        path = self.artifacts / f"{name}.json"
        path.write_text(json.dumps(data, indent=1))
        return path


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
