"""The example workflows as files: the UI twins match their API-format sources, ComfyUI's template folder holds
only them (with thumbnails), and their stored layout has no overlaps. The browser tests (tests/browser) check
the same workflows in the real frontends."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "examples" / "api").glob("*.json"))


def _maker():
    spec = importlib.util.spec_from_file_location("make_ui_workflows", ROOT / "examples" / "make_ui_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ui(source: Path) -> dict:
    return json.loads((ROOT / "example_workflows" / f"{_maker().TITLES[source.stem]}.json").read_text())


def test_template_folder_holds_one_titled_ui_workflow_and_thumbnail_per_source():
    titles = _maker().TITLES
    assert SOURCES and sorted(titles) == sorted(p.stem for p in SOURCES)
    folder = ROOT / "example_workflows"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{titles[p.stem]}{ext}" for p in SOURCES for ext in (".json", ".jpg"))
    for path in folder.glob("*.jpg"):
        assert path.read_bytes()[:3] == b"\xff\xd8\xff", f"{path.name} is not a JPEG (the frontends ask for .jpg)"
    # ComfyUI also lists *.json directly under examples/ as templates: only the UI twins may be listed.
    assert not list((ROOT / "examples").glob("*.json"))


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_ui_twin_has_the_source_graph(source: Path):
    api, ui = json.loads(source.read_text()), _ui(source)
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        inputs = api[str(node["id"])]["inputs"]
        for slot in node["inputs"]:
            _, src, src_slot, dst, _, _ = links[slot["link"]]
            assert (dst, inputs[slot["name"]]) == (node["id"], [str(src), src_slot])
        fed = {slot["name"] for slot in node["inputs"] if "widget" in slot}  # widgets a link feeds: their value stays
        values = iter(v for v in node["widgets_values"] if v != "fixed")  # "fixed": control_after_generate
        for name, value in inputs.items():  # the source lists its inputs in the node's widget order
            if name in fed:
                next(values)
            elif not isinstance(value, list):
                assert next(values) == value, f"{node['type']}.{name}"
        assert None not in node["widgets_values"]  # then optional inputs at their defaults
        assert "lora_lab_run" not in node["properties"]  # an example carries no chart of someone's run


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_stored_layout_has_no_overlaps_and_groups_hold_their_nodes(source: Path):
    ui, title = _ui(source), 30
    boxes = [(n["type"], n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in ui["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]), f"{a[0]} overlaps {b[0]}"
    for _, x0, y0, x1, y1 in boxes:
        assert any(g[0] <= x0 and g[1] <= y0 and x1 <= g[0] + g[2] and y1 <= g[1] + g[3]
                   for g in (group["bounding"] for group in ui["groups"]))
