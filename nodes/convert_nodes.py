"""Convert LoRA / Inspect LoRA: thin node faces of converters.convert_file and converters.inspect_lora."""

from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..converters import convert_file, inspect_lora
from ..converters.conversion_error import AmbiguousFamilyError
from ..converters.families import ARCH_CHOICES
from ..lora_core.errors import LoraFormatError
from .comfy_paths import unused_lora_path
from .family import model_family

ARCHS = ["auto"] + ARCH_CHOICES
DTYPES = ["keep", "fp16", "bf16", "fp32"]


def _lora_files() -> list[str]:
    return folder_paths.get_filename_list("loras")


class ConvertLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabConvertLora",
            display_name="Convert LoRA",
            category="LoRA Lab",
            description="Converts a LoRA in models/loras between diffusers/PEFT and ComfyUI (kohya) keys, exactly "
                        "(alpha, fused q/k/v, DoRA kept). Writes a new file next to it; never overwrites.",
            is_output_node=True,
            inputs=[
                io.Combo.Input("lora_name", options=_lora_files(), tooltip="The LoRA file to convert."),
                io.Combo.Input("to", options=["comfyui", "diffusers"], default="comfyui",
                               tooltip="comfyui: kohya keys ComfyUI maps; diffusers: PEFT keys + lora_adapter_metadata."),
                io.String.Input("output_name", default="", tooltip="New file name; empty = '<name>_<to>'."),
                io.Combo.Input("arch", options=ARCHS, default="auto",
                               tooltip="Model family; auto detects it from keys and shapes."),
                io.Combo.Input("dtype", options=DTYPES, default="keep", tooltip="Tensor dtype of the output."),
                io.Boolean.Input("strict", default=False, tooltip="Fail instead of reporting unmatched keys."),
                io.Model.Input("model", optional=True,
                               tooltip="The model the LoRA is for: its family decides when the keys fit several "
                                       "(arch 'auto' only)."),
            ],
            outputs=[io.String.Output(display_name="report"), io.String.Output(display_name="path")],
        )

    @classmethod
    def execute(cls, lora_name, to, output_name, arch, dtype, strict, model=None) -> io.NodeOutput:
        source = Path(folder_paths.get_full_path_or_raise("loras", lora_name))
        target = unused_lora_path(output_name.strip() or f"{source.stem}_{to}")
        hint = model_family(model) if model is not None else None
        try:
            report = convert_file(source, target, to=to, arch=None if arch == "auto" else arch,
                                  dtype=None if dtype == "keep" else dtype, strict=strict, hint=hint)
        except AmbiguousFamilyError as e:
            model_says = f"; the connected model is {hint}, none of them" if hint else ""
            raise LoraFormatError(f"Convert LoRA: {lora_name}: the keys fit {', '.join(e.candidates)}, which convert "
                                  f"them differently{model_says}. Set arch to the one this LoRA is for, or connect "
                                  f"the model it is for. ({e})") from None
        text = f"{lora_name} -> {target.name}\n{report}"
        return io.NodeOutput(text, str(target), ui=ui.PreviewText(text))


class InspectLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabInspectLora",
            display_name="Inspect LoRA",
            category="LoRA Lab",
            description="Format, model family, modules, ranks, alphas, adapter types, metadata and trigger words.",
            is_output_node=True,
            inputs=[io.Combo.Input("lora_name", options=_lora_files(), tooltip="The LoRA file to describe."),
                    io.Model.Input("model", optional=True,
                                   tooltip="The model the LoRA is for: its family decides when the keys fit several.")],
            outputs=[io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, lora_name, model=None) -> io.NodeOutput:
        hint = model_family(model) if model is not None else None
        text = str(inspect_lora(Path(folder_paths.get_full_path_or_raise("loras", lora_name)), hint=hint))
        return io.NodeOutput(text, ui=ui.PreviewText(text))
