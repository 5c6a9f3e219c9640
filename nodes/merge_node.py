"""Merge LoRAs: up to four LoRAs from models/loras into one new file there (exact, or SVD to a rank)."""

from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..converters.merge import merge_loras
from .comfy_paths import unused_lora_path

NONE = "[none]"
SLOTS = 4


class MergeLoras(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = folder_paths.get_filename_list("loras")
        inputs = []
        for i in range(1, SLOTS + 1):
            inputs += [
                io.Combo.Input(f"lora_{i}", options=(files if i == 1 else [NONE] + files),
                               default=None if i == 1 else NONE,
                               tooltip="A LoRA in models/loras (any supported format; all of one model family)."),
                io.Float.Input(f"weight_{i}", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Its weight in the sum (negative subtracts it)."),
            ]
        inputs += [
            io.Int.Input("rank", default=0, min=0, max=1024,
                         tooltip="0: exact (the ranks add up). Otherwise the sum is truncated by SVD to this rank; "
                                 "each module's relative error is reported."),
            io.Combo.Input("to", options=["comfyui", "diffusers"], default="comfyui",
                           tooltip="comfyui: kohya keys ComfyUI maps; diffusers: PEFT keys + lora_adapter_metadata."),
            io.String.Input("output_name", default="merged_lora",
                            tooltip="New file in models/loras; never overwrites (a counter is added)."),
        ]
        return io.Schema(
            node_id="LoraLabMergeLoras",
            display_name="Merge LoRAs",
            category="LoRA Lab",
            description="Merges LoRAs into one LoRA file: exactly (ranks concatenated, weights folded in) or by SVD "
                        "to a rank. Baking a LoRA into a model is ComfyUI's own LoraLoader + CheckpointSave.",
            is_output_node=True,
            inputs=inputs,
            outputs=[io.String.Output(display_name="report"), io.String.Output(display_name="path")],
        )

    @classmethod
    def execute(cls, rank, to, output_name, **slots) -> io.NodeOutput:
        chosen = [(slots[f"lora_{i}"], slots[f"weight_{i}"]) for i in range(1, SLOTS + 1)
                  if slots.get(f"lora_{i}", NONE) != NONE]
        inputs = [(Path(folder_paths.get_full_path_or_raise("loras", name)), weight) for name, weight in chosen]
        target = unused_lora_path(output_name)
        report = merge_loras(inputs, target, rank=rank or None, to=to)
        text = str(report)
        return io.NodeOutput(text, str(target), ui=ui.PreviewText(text))
