"""Resize LoRA: re-rank a LoRA from models/loras by SVD into a new file there."""

from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..converters.resize import METHODS, resize_lora
from .comfy_paths import unused_lora_path


class ResizeLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabResizeLora",
            display_name="Resize LoRA",
            category="LoRA Lab",
            description="Re-ranks a LoRA by SVD, to a fixed rank or per module by kohya's dynamic criteria; reports "
                        "each module's new rank and relative error.",
            is_output_node=True,
            inputs=[
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="The LoRA to resize."),
                io.Combo.Input("method", options=list(METHODS), default="rank",
                               tooltip="rank: keep `rank`; sv_ratio: keep singular values >= largest / value; sv_fro: "
                                       "keep this fraction of the Frobenius norm; sv_cumulative: of the sum of "
                                       "singular values."),
                io.Int.Input("rank", default=16, min=1, max=1024,
                             tooltip="The new rank (method rank), or the highest rank allowed (dynamic methods)."),
                io.Float.Input("value", default=0.9, min=0.0, max=1000.0, step=0.001,
                               tooltip="The dynamic criterion's value (ratio >= 1; fractions in (0, 1])."),
                io.Combo.Input("to", options=["same", "comfyui", "diffusers"], default="same",
                               tooltip="Output format; same: the input's own side."),
                io.String.Input("output_name", default="", tooltip="New file name; empty = '<name>_resized'."),
            ],
            outputs=[io.String.Output(display_name="report"), io.String.Output(display_name="path")],
        )

    @classmethod
    def execute(cls, lora_name, method, rank, value, to, output_name) -> io.NodeOutput:
        source = Path(folder_paths.get_full_path_or_raise("loras", lora_name))
        target = unused_lora_path(output_name.strip() or f"{source.stem}_resized")
        report = resize_lora(source, target, method=method, value=None if method == "rank" else value, rank=rank,
                             to=None if to == "same" else to)
        text = f"{lora_name} -> {target.name}\n{report}"
        return io.NodeOutput(text, str(target), ui=ui.PreviewText(text))
