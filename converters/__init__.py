"""LoRA key formats: detect, read, write and map names between diffusers/PEFT and ComfyUI/kohya."""

from __future__ import annotations

from .comfy_names import comfyui_kohya_names, comfyui_names_for
from .convert import convert_file, convert_state_dict, to_comfyui_state_dict
from .inspect_lora import LoraReport, inspect_lora
from .report import ConvertReport, UnmatchedKey

__all__ = ["convert_file", "convert_state_dict", "to_comfyui_state_dict", "inspect_lora", "LoraReport",
           "ConvertReport", "UnmatchedKey", "comfyui_kohya_names", "comfyui_names_for"]
