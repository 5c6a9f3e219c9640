"""Write the UI-format (drag-and-drop, template browser) twin of each API-format example workflow.

The API-format sources are examples/api/*.json (what POST /prompt takes). The UI format needs each node's widget
order, which only a running ComfyUI knows (GET /object_info), so:

    python examples/make_ui_workflows.py http://127.0.0.1:8188     # a ComfyUI with LoRA Lab installed

writes example_workflows/<title>.json. ComfyUI lists that folder in its template browser (Templates ->
Extensions -> the pack's folder name), titled by the file name, with <title>.jpg as the thumbnail.

Layout, as a person would do it: the training part on top (loaders, Train LoRA, its consumers), the part that
uses the trained model below it, each in a group; columns by graph depth, nodes stacked in a column without
overlapping. Node sizes are the frontend's minimum size for their slots and widgets (LiteGraph's computeSize:
20 px per slot row, 24 px per widget row, more for text boxes and the live chart) plus a margin; the browser
tests (tests/browser/test_examples.py) check on both frontends that no node overlaps another and that every
widget is inside its node.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "api"
TARGET = HERE.parent / "example_workflows"
TITLES = {
    "sd15_train_lora": "SD1.5 LoRA training",
    "flux_train_lora": "Flux.1 LoRA training",
    "flux_kontext_edit_lora": "Flux Kontext edit LoRA training",
    "qwen_image_edit_lora": "Qwen-Image edit LoRA training",
    "wan22_i2v_two_experts_lora": "Wan 2.2 I2V A14B two-expert LoRA training",
}
GROUPS = ("1. Train the LoRA", "2. Sample with the trained LoRA")

TITLE_H, SLOT_H, WIDGET_H = 30, 20, 24  # LiteGraph's title bar, slot row, widget row (+ spacing)
GAP_X, GAP_Y, GROUP_PAD = 60, 50, 30
WIDTH = {"LoraLabTrain": 460, "CLIPTextEncode": 400}
EXTRA_HEIGHT = {"LoraLabTrain": 220,  # the live chart (web/train_chart.js: 190 px minimum) and its margins
                "LoadImage": 260}  # the picture's preview
TEXTBOX_H = 90  # a multiline STRING widget
# Where the model files the examples name come from (the URLs ComfyUI's own default graph and Flux templates
# give): the August 2026 frontend offers to download a missing one instead of only flagging the loader.
MODELS = {
    "v1-5-pruned-emaonly-fp16.safetensors": (
        "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",
        "checkpoints"),
    "flux1-dev.safetensors": ("https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors",
                              "diffusion_models"),
    "clip_l.safetensors": ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
                           "text_encoders"),
    "t5xxl_fp16.safetensors": (
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors", "text_encoders"),
    "flux1-dev-kontext_fp8_scaled.safetensors": (
        "https://huggingface.co/Comfy-Org/flux1-kontext-dev_ComfyUI/resolve/main/split_files/diffusion_models/"
        "flux1-dev-kontext_fp8_scaled.safetensors", "diffusion_models"),
    "qwen_image_edit_2509_fp8_e4m3fn.safetensors": (
        "https://huggingface.co/Comfy-Org/Qwen-Image-Edit_ComfyUI/resolve/main/split_files/diffusion_models/"
        "qwen_image_edit_2509_fp8_e4m3fn.safetensors", "diffusion_models"),
    "qwen_2.5_vl_7b_fp8_scaled.safetensors": (
        "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/text_encoders/"
        "qwen_2.5_vl_7b_fp8_scaled.safetensors", "text_encoders"),
    "qwen_image_vae.safetensors": (
        "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/vae/qwen_image_vae.safetensors",
        "vae"),
    "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors": (
        "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/diffusion_models/"
        "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "diffusion_models"),
    "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors": (
        "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/diffusion_models/"
        "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", "diffusion_models"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": (
        "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/"
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
    "wan_2.1_vae.safetensors": (
        "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/vae/wan_2.1_vae.safetensors",
        "vae"),
    "ae.safetensors": (
        "https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors", "vae"),
}


def _input_specs(info: dict) -> list[tuple[str, object]]:
    spec = info["input"]
    return list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items())


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _default(spec):
    """A widget's initial value: the declared default, else a combo's first option (as the frontend picks)."""
    options = spec[1] if len(spec) > 1 else {}
    if "default" in options:
        return options["default"]
    if spec[0] == "STRING":
        return ""  # what the frontend shows in an empty text box
    choices = spec[0] if isinstance(spec[0], list) else options.get("options") or [None]
    return choices[0] if choices else None


def model_refs(widget_values: list) -> list[dict]:
    """The ``properties.models`` entries (name, url, directory) for the model files a node's widgets name."""
    return [{"name": v, "url": MODELS[v][0], "directory": MODELS[v][1]} for v in widget_values
            if isinstance(v, str) and v in MODELS]


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


def _bands(api: dict) -> dict[str, int]:
    """0: LoRA Lab nodes and what feeds them (the training part); 1: everything else (using the result)."""
    feeds: set[str] = set()

    def mark(node_id: str) -> None:
        for value in api[node_id]["inputs"].values():
            if isinstance(value, list) and value[0] not in feeds:
                feeds.add(value[0])
                mark(value[0])

    lora_lab = [n for n, node in api.items() if node["class_type"].startswith("LoraLab")]
    for node_id in lora_lab:
        mark(node_id)
    return {n: 0 if n in feeds or n in lora_lab else 1 for n in api}


def _node(node_id: str, node: dict, info: dict, links: list, out_links: dict) -> dict:
    inputs, widgets, rows_extra = [], [], 0
    for name, spec in _input_specs(info):
        value = node["inputs"].get(name)
        if isinstance(value, list):  # a link [source_id, output_index]
            link_id = len(links) + 1
            kind = spec[0] if isinstance(spec[0], str) else "COMBO"
            links.append([link_id, int(value[0]), value[1], int(node_id), len(inputs), kind])
            out_links.setdefault((value[0], value[1]), []).append(link_id)
            slot = {"name": name, "type": kind, "link": link_id}
            if _is_widget(spec):  # a widget fed by a link (a prompt from the dataset's captions) keeps its value
                slot["widget"] = {"name": name}
                widgets.append(_default(spec))
            inputs.append(slot)
        elif _is_widget(spec):
            options = spec[1] if len(spec) > 1 else {}
            widgets.append(value if value is not None else _default(spec))
            if options.get("control_after_generate"):
                widgets.append("fixed")  # the frontend's extra "control after generate" widget
            if options.get("image_upload"):
                widgets.append("image")  # LoadImage's upload button, which the frontend saves as "image"
            if spec[0] == "STRING" and options.get("multiline"):
                rows_extra += TEXTBOX_H - WIDGET_H
    is_list = info.get("output_is_list") or [False] * len(info["output"])
    outputs = [{"name": n, "type": t, "links": [], "slot_index": i, **({"shape": 6} if is_list[i] else {})}
               for i, (n, t) in enumerate(zip(info.get("output_name", info["output"]), info["output"]))]  # 6: grid = list
    kind = node["class_type"]
    height = (max(len(inputs), len(outputs), 1) * SLOT_H + len(widgets) * WIDGET_H + rows_extra
              + EXTRA_HEIGHT.get(kind, 0) + 16)
    return {
        "id": int(node_id), "type": kind, "pos": [0, 0], "size": [WIDTH.get(kind, 320), int(height * 1.1)],
        "flags": {}, "order": 0, "mode": 0, "inputs": inputs, "outputs": outputs,
        "properties": {"Node name for S&R": kind, **({"models": model_refs(widgets)} if model_refs(widgets) else {})},
        "widgets_values": widgets,
    }


def _layout(api: dict, nodes: dict[str, dict]) -> list[dict]:
    """Place nodes in (band, column) cells; returns one group per band."""
    depth, band = _depths(api), _bands(api)
    columns = sorted(set(depth.values()))
    col_width = {c: max(nodes[n]["size"][0] for n in api if depth[n] == c) for c in columns}
    col_x, x = {}, 60
    for c in columns:
        col_x[c], x = x, x + col_width[c] + GAP_X
    groups, top = [], 60 + GROUP_PAD + TITLE_H
    for b in sorted(set(band.values())):
        bottom, right = top, 0
        for c in columns:
            y = top
            for n in sorted((n for n in api if band[n] == b and depth[n] == c), key=int):
                nodes[n]["pos"] = [col_x[c], y]
                y += nodes[n]["size"][1] + TITLE_H + GAP_Y
                bottom = max(bottom, y - GAP_Y)
                right = max(right, col_x[c] + nodes[n]["size"][0])
        left = min(col_x[depth[n]] for n in api if band[n] == b)
        groups.append({"title": GROUPS[min(b, len(GROUPS) - 1)], "color": "#3f789e", "font_size": 24,
                       "bounding": [left - GROUP_PAD, top - TITLE_H - GROUP_PAD - 34,
                                    right - left + 2 * GROUP_PAD, bottom - top + TITLE_H + 2 * GROUP_PAD + 34]})
        top = bottom + 2 * GROUP_PAD + 34 + GAP_Y + TITLE_H
    return groups


def api_to_ui(api: dict, object_info: dict) -> dict:
    links: list = []
    out_links: dict[tuple[str, int], list[int]] = {}
    nodes = {n: _node(n, node, object_info[node["class_type"]], links, out_links) for n, node in api.items()}
    groups = _layout(api, nodes)
    for node in nodes.values():
        for slot in node["outputs"]:
            slot["links"] = out_links.get((str(node["id"]), slot["slot_index"]), [])
    depth = _depths(api)
    for order, node_id in enumerate(sorted(nodes, key=lambda n: (depth[n], int(n)))):
        nodes[node_id]["order"] = order
    return {"last_node_id": max(int(n) for n in nodes), "last_link_id": len(links), "nodes": list(nodes.values()),
            "links": links, "groups": groups, "config": {}, "extra": {}, "version": 0.4}


def main(url: str) -> None:
    with urllib.request.urlopen(f"{url.rstrip('/')}/object_info", timeout=60) as response:
        object_info = json.load(response)
    TARGET.mkdir(exist_ok=True)
    for path in sorted(SOURCES.glob("*.json")):
        ui = api_to_ui(json.loads(path.read_text()), object_info)
        target = TARGET / f"{TITLES.get(path.stem, path.stem)}.json"
        target.write_text(json.dumps(ui, indent=1) + "\n")
        print(f"wrote {target.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
