"""Save LoRA: write a trained LORA to models/loras in ComfyUI-loadable kohya keys with metadata."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..lora_core.files.lora_file import save_lora_file
from .comfy_paths import unused_lora_path
from .types import LORA


class SaveLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabSaveLora",
            display_name="Save LoRA",
            category="LoRA Lab",
            description="Writes models/loras/<name>.safetensors (kohya-style keys, .alpha, ss_*/modelspec "
                        "metadata). An existing file is never overwritten: a counter is added.",
            is_output_node=True,
            inputs=[
                LORA.Input("lora", tooltip="The LoRA from 'Train LoRA'."),
                io.String.Input("name", default="lora_lab_lora",
                                tooltip="File name without folders; '.safetensors' is added."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the file was written.")],
        )

    @classmethod
    def execute(cls, lora, name) -> io.NodeOutput:
        path = unused_lora_path(name)
        save_lora_file(path, lora.state_dict(), {**lora.metadata, "ss_output_name": path.stem})
        return io.NodeOutput(str(path), ui=ui.PreviewText(f"Saved {path}"))
