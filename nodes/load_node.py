"""Load LoRA: a file from models/loras (any supported format) or a LORA from Train LoRA, at a strength."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import folder_paths
from comfy_api.latest import io, ui

from ..converters.convert import plan_conversion
from ..converters.conversion_error import AmbiguousFamilyError, NotALoraError
from ..converters.source import open_source
from ..lora_core.errors import LoraFormatError
from .family import model_family
from .lora_apply import apply_lora
from .types import LORA

log = logging.getLogger("lora_lab")

NONE = "[none]"
_cache: dict[tuple[str, str | None], tuple[float, tuple[dict[str, torch.Tensor], str | None, str]]] = {}


def comfy_state_dict_from_file(path: Path, hint: str | None = None
                               ) -> tuple[dict[str, torch.Tensor], str | None, str]:
    """The LoRA's tensors in the form ComfyUI maps (diffusers/PEFT and others converted in memory), its family, and
    a line on how that family was chosen (empty when the keys alone say it).

    hint: the family of the MODEL it is applied to, which decides when the keys fit several families. Damaged,
    empty or unsafe files (a pickle holding code is never unpickled) and files that are not LoRAs raise a
    LoraFormatError naming the file. A key layout we do not parse, or keys that fit several families none of
    which is the model's, go to ComfyUI as they are: its own loader may know them, and the match report below
    says what it mapped.
    """
    mtime = path.stat().st_mtime
    cached = _cache.get((str(path), hint))
    if cached and cached[0] == mtime:
        return cached[1]
    family, note = None, ""
    source = open_source(path)
    try:
        try:
            conversion = plan_conversion(source, "comfyui", hint=hint)
        except NotALoraError:
            raise
        except AmbiguousFamilyError as error:  # never a guess: ComfyUI's own key map decides what it reads
            note = f"not converted: the keys fit {', '.join(error.candidates)}, and the model is {hint or 'unknown'}"
            log.info("LoRA Lab: %s loaded as-is (%s)", path.name, error)
            state_dict = {key: source.get(key) for key in source.keys()}
        except LoraFormatError as error:  # a layout we do not parse: ComfyUI's own loader may know it
            log.info("LoRA Lab: %s loaded as-is (%s)", path.name, error)
            state_dict = {key: source.get(key) for key in source.keys()}
        else:
            report = conversion.report()
            log.info("LoRA Lab: %s: %s", path.name, report)
            state_dict = dict(conversion.tensors(source.get))
            # keys no rule converts are left for ComfyUI's own loader (it reports any it cannot map either)
            keys = set(source.keys())
            state_dict.update({u.key: source.get(u.key) for u in report.unmatched if u.key in keys})
            family = ("/".join(report.candidates) if report.candidates
                      else report.variant if report.family != "generic" else None)
            note = report.family_note
    finally:
        source.close()
    _cache.clear()
    _cache[(str(path), hint)] = (mtime, (state_dict, family, note))
    return state_dict, family, note


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
        family, note = None, ""
        if lora is not None:
            state_dict, source = lora.state_dict(), "from Train LoRA"
        elif lora_name != NONE:
            path = Path(folder_paths.get_full_path_or_raise("loras", lora_name))
            (state_dict, family, note), source = comfy_state_dict_from_file(path, model_family(model)), lora_name
        else:
            raise LoraFormatError("Load LoRA: choose a lora_name or connect a LORA.")
        if strength_model == 0 and strength_clip == 0:
            return io.NodeOutput(model, clip, "strengths are 0: nothing applied")
        model, clip, report = apply_lora(model, clip, state_dict, strength_model, strength_clip, source, family)
        text = f"{source}: {report}" + (f"\nfamily: {family or 'as the file names it'} ({note})" if note else "")
        return io.NodeOutput(model, clip, text, ui=ui.PreviewText(text))
