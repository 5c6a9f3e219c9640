"""Load LoRA: a file from models/loras (any supported format) or a LORA from Train LoRA, at a strength."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..lora_core.errors import LoraFormatError
from .lora_apply import apply_lora
from .types import LORA

log = logging.getLogger("lora_lab")

NONE = "[none]"
_cache: dict[str, tuple[float, dict[str, torch.Tensor]]] = {}


def _read_metadata(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def comfy_state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a LoRA file and bring its keys into the form ComfyUI maps (converting diffusers/PEFT in memory)."""
    mtime = path.stat().st_mtime
    cached = _cache.get(str(path))
    if cached and cached[0] == mtime:
        return cached[1]
    state_dict = comfy.utils.load_torch_file(str(path), safe_load=True)
    try:
        from ..converters import to_comfyui_state_dict
    except ImportError:  # converters not installed: ComfyUI's own key mapping still applies
        to_comfyui_state_dict = None
    if to_comfyui_state_dict is not None:
        try:
            state_dict, _, report = to_comfyui_state_dict(state_dict, _read_metadata(path))
            log.info("LoRA Lab: %s: %s", path.name, report)
        except LoraFormatError as error:
            # Not a format we convert (e.g. a family we do not map): ComfyUI may still know it.
            log.info("LoRA Lab: %s loaded as-is (%s)", path.name, error)
    _cache.clear()
    _cache[str(path)] = (mtime, state_dict)
    return state_dict


class LoadLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabLoadLora",
            display_name="Load LoRA",
            category="LoRA Lab",
            description="Applies a LoRA (kohya, ComfyUI, diffusers/PEFT and other formats) to MODEL and CLIP. "
                        "Chains like the core LoraLoader; strengths may be negative.",
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("lora_name", options=[NONE] + folder_paths.get_filename_list("loras"),
                               default=NONE, tooltip="A file in models/loras (ignored when 'lora' is connected)."),
                io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="Multiplier of the LoRA's change to the diffusion model; may be negative."),
                io.Float.Input("strength_clip", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="Multiplier of the LoRA's change to the text encoder; may be negative."),
                io.Clip.Input("clip", optional=True, tooltip="Text encoder, if the LoRA also changes it."),
                LORA.Input("lora", optional=True, tooltip="A LoRA straight from 'Train LoRA'."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Clip.Output(display_name="clip"),
                     io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength_model, strength_clip, clip=None, lora=None) -> io.NodeOutput:
        if lora is not None:
            state_dict, source = lora.state_dict(), "from Train LoRA"
        elif lora_name != NONE:
            path = Path(folder_paths.get_full_path_or_raise("loras", lora_name))
            state_dict, source = comfy_state_dict_from_file(path), lora_name
        else:
            raise LoraFormatError("Load LoRA: choose a lora_name or connect a LORA.")
        if strength_model == 0 and strength_clip == 0:
            return io.NodeOutput(model, clip, "strengths are 0: nothing applied")
        model, clip, report = apply_lora(model, clip, state_dict, strength_model, strength_clip, source)
        text = f"{source}: {report}"
        return io.NodeOutput(model, clip, text, ui=ui.PreviewText(text))
