"""Write the UI-format (drag-and-drop) twin of each API-format example workflow.

The UI format needs each node's widget order, which only a running ComfyUI knows (GET /object_info), so:

    python examples/make_ui_workflows.py http://127.0.0.1:8188     # a ComfyUI with LoRA Lab installed

turns examples/*_api.json into examples/*_ui.json. Nodes are laid out left to right by graph depth.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _input_specs(info: dict) -> list[tuple[str, object]]:
    spec = info["input"]
    return list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items())


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            links = [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(src) for src in links), default=-1)
        return depth[node_id]

    for node_id in api:
        visit(node_id)
    return depth


def api_to_ui(api: dict, object_info: dict) -> dict:
    depth = _depths(api)
    rows: dict[int, int] = {}
    nodes, links = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    for node_id, node in api.items():
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec in _input_specs(info):
            value = node["inputs"].get(name)
            if isinstance(value, list):  # a link [source_id, output_index]
                link_id = len(links) + 1
                kind = spec[0] if isinstance(spec[0], str) else "COMBO"
                links.append([link_id, int(value[0]), value[1], int(node_id), len(inputs), kind])
                out_links.setdefault((value[0], value[1]), []).append(link_id)
                inputs.append({"name": name, "type": kind, "link": link_id})
            elif _is_widget(spec):
                widgets.append(value if value is not None else spec[1].get("default") if len(spec) > 1 else None)
                if len(spec) > 1 and spec[1].get("control_after_generate"):
                    widgets.append("fixed")  # the frontend's extra "control after generate" widget
        column = depth[node_id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        nodes.append({
            "id": int(node_id), "type": node["class_type"], "pos": [60 + 380 * column, 60 + 300 * row],
            "size": [340, 260], "flags": {}, "order": 0, "mode": 0, "inputs": inputs,
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                        for i, (n, t) in enumerate(zip(info.get("output_name", info["output"]), info["output"]))],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        })
    for node in nodes:
        for slot in node["outputs"]:
            slot["links"] = out_links.get((str(node["id"]), slot["slot_index"]), [])
    for order, node in enumerate(sorted(nodes, key=lambda n: depth[str(n["id"])])):
        node["order"] = order
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main(url: str) -> None:
    with urllib.request.urlopen(f"{url.rstrip('/')}/object_info", timeout=60) as response:
        object_info = json.load(response)
    for path in sorted(HERE.glob("*_api.json")):
        ui = api_to_ui(json.loads(path.read_text()), object_info)
        target = path.with_name(path.name.replace("_api.json", "_ui.json"))
        target.write_text(json.dumps(ui, indent=1) + "\n")
        print(f"wrote {target.name}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
