"""Every example workflow opens in the real frontend: known node types, the right widget values, no node over
another, every widget inside its node; and ComfyUI's template browser lists them with titles and thumbnails."""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .browser import REPO_ROOT

EXAMPLES = sorted((REPO_ROOT / "example_workflows").glob("*.json"))
PACK = "lora_lab"  # the folder name the harness links the pack under in custom_nodes/


def _boxes_overlap(a, b, title_h) -> bool:
    ax0, ay0, ax1, ay1 = a["pos"][0], a["pos"][1] - title_h, a["pos"][0] + a["size"][0], a["pos"][1] + a["size"][1]
    bx0, by0, bx1, by1 = b["pos"][0], b["pos"][1] - title_h, b["pos"][0] + b["size"][0], b["pos"][1] + b["size"][1]
    return ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def _thumbnail(comfy_page, name: str) -> None:
    """Screenshot of the whole example at a readable zoom; also saved as the square JPEG the template browser
    shows (copy out/browser/<frontend>/<name>.jpg to example_workflows/ when an example changes)."""
    from PIL import Image

    page = comfy_page.page
    page.set_viewport_size({"width": 2400, "height": 1800})
    box = comfy_page.fit_graph()
    page.wait_for_timeout(500)
    shot = comfy_page.artifacts / f"example-{name}.png"
    page.screenshot(path=str(shot), clip=box)
    with Image.open(shot) as image:
        side = max(image.size)
        square = Image.new("RGB", (side, side), (32, 32, 32))
        square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
        square.resize((640, 640), Image.LANCZOS).save(comfy_page.artifacts / f"{name}.jpg", quality=85)
    page.set_viewport_size({"width": 1600, "height": 1000})


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_loads_laid_out(comfy_page, path: Path):
    workflow = json.loads(path.read_text())
    comfy_page.load_workflow(workflow)
    report = comfy_page.graph_report()
    nodes, title_h = report["nodes"], report["title_height"]
    _thumbnail(comfy_page, path.stem)

    assert not comfy_page.missing_node_dialog(), "the frontend reported missing nodes"
    assert [n["type"] for n in nodes if not n["registered"]] == []
    assert [n["type"] for n in nodes if n["has_errors"]] == []
    # 1.49 reports missing model files in an error overlay ("… is missing"); both show errors as toasts.
    shown = comfy_page.page.locator(".p-toast-message-error").all_inner_texts()
    shown += comfy_page.page.get_by_text(re.compile(r"\bis missing\b", re.I)).all_inner_texts()
    assert not shown, f"the frontend showed errors: {shown}"
    assert len(nodes) == len(workflow["nodes"])

    by_id = {str(n["id"]): n for n in nodes}  # 1.49 may hold ids as strings
    for saved in workflow["nodes"]:
        node = by_id[str(saved["id"])]
        values = [w["value"] for w in node["widgets"] if w["serialize"]]
        assert len(values) == len(saved["widgets_values"]), (
            f"{node['type']}: {len(values)} widgets in the frontend, {len(saved['widgets_values'])} in the file")
        wrong = [(w, v) for w, v in zip(values, saved["widgets_values"]) if not _same(w, v)]
        assert not wrong, f"{node['type']}: widget values (frontend, file) differ: {wrong}"

    for node in nodes:
        assert node["size"][0] >= node["min"][0] - 0.5 and node["size"][1] >= node["min"][1] - 0.5, (
            f"{node['type']} is {node['size']}, smaller than its widgets need {node['min']}")
        for widget in (w for w in node["widgets"] if w["visible"]):
            assert widget["y"] + widget["height"] <= node["size"][1] + 0.5, f"{node['type']}.{widget['name']} is cut off"
    overlaps = [(a["type"], b["type"]) for i, a in enumerate(nodes) for b in nodes[i + 1:]
                if _boxes_overlap(a, b, title_h)]
    assert not overlaps, f"overlapping nodes: {overlaps}"
    assert not comfy_page.page_errors, comfy_page.page_errors


def test_template_browser_lists_the_examples_with_thumbnails(comfy_page, browser_server):
    listed = browser_server.get("/workflow_templates")
    assert sorted(listed.get(PACK, [])) == sorted(p.stem for p in EXAMPLES)  # no API-format files listed
    for path in EXAMPLES:
        url = f"{browser_server.base_url}/api/workflow_templates/{PACK}/{urllib.parse.quote(path.stem)}"
        with urllib.request.urlopen(url + ".json") as response:
            assert json.load(response) == json.loads(path.read_text())
        with urllib.request.urlopen(url + ".jpg") as response:  # both frontends ask for <name>.jpg
            assert response.headers["Content-Type"] == "image/jpeg" and len(response.read()) > 1000

    page = comfy_page.page
    page.get_by_text("Templates", exact=True).first.click()
    page.get_by_text(PACK, exact=True).first.click()
    for path in EXAMPLES:
        page.get_by_text(path.stem, exact=True).first.wait_for(timeout=30_000)
    # The cards load thumbnails as blob: URLs, named by alt; a missing one would show the 'default-template' image.
    page.wait_for_function("""(names) => names.every(n => [...document.images].some(img => img.alt === n
        && !img.src.includes('default-template') && img.complete && img.naturalWidth === 640))""",
                           arg=[p.stem for p in EXAMPLES], timeout=30_000)
    comfy_page.screenshot("template-browser")
