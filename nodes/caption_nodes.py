"""Caption Images and Save Captions: captions for a dataset folder from the graph, written as .txt sidecars.

Caption Images runs a vision-language text encoder ComfyUI has loaded through the machinery of ComfyUI's own
'Generate Text' node (comfy_extras/nodes_textgen.py TextGenerate: the CLIP's tokenizer with the image, then its
generate and decode), so every model that node supports captions here; a ComfyUI without it gets an error
saying so. Save Captions writes a STRING list from any captioning node. Both write a sidecar only where none
exists unless told to overwrite (lora_core/data/caption_sidecars.py) and report what they wrote.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.utils
from comfy_api.latest import io, ui

from ..lora_core.data.caption_sidecars import (SidecarReport, dataset_images, final_caption, listed_images,
                                               named_images, pixels_for_captioning, write_sidecars)
from ..lora_core.data.captions import check_template
from ..lora_core.data.dataset_files import relative
from ..lora_core.errors import LoraLabError
from .comfy_paths import resolve_dataset_folder
from .dataset_inputs import folder_fingerprint, folder_input, validate_paths

log = logging.getLogger("lora_lab")
DEFAULT_PROMPT = ("Describe this image in one sentence as a caption for training an image model: the subject, "
                  "what it does, the setting, the style and the lighting.")


class CaptioningUnavailable(LoraLabError):
    """This ComfyUI, or the connected CLIP, cannot generate text from an image."""


def text_generator():
    """ComfyUI's TextGenerate node class, or CaptioningUnavailable naming what is missing."""
    try:
        from comfy_extras.nodes_textgen import TextGenerate
    except ImportError:
        raise CaptioningUnavailable(
            "Caption Images needs ComfyUI's text generation (the 'Generate Text' node, comfy_extras/nodes_textgen.py), "
            f"which this ComfyUI ({_comfy_version()}) does not have: update ComfyUI, or write the captions another way "
            "and save them with Save Captions") from None
    return TextGenerate


def _comfy_version() -> str:
    try:
        from comfyui_version import __version__
    except ImportError:
        return "version unknown"
    return f"version {__version__}"


def _sees_images(clip, prompt: str, image) -> bool:
    """Whether the CLIP's tokenizer puts the image into the tokens (a text-only LLM would caption blind)."""
    tokens = clip.tokenize(prompt, image=image, min_length=1)
    return any(isinstance(t[0], dict) and t[0].get("type") == "image"
               for rows in tokens.values() for row in rows for t in row)


def _check_clip(clip, prompt: str, image) -> None:
    can_generate = callable(getattr(clip, "generate", None)) and callable(getattr(clip.cond_stage_model, "generate", None))
    if not (can_generate and _sees_images(clip, prompt, image)):
        raise CaptioningUnavailable(f"The connected CLIP ({type(clip.cond_stage_model).__name__}) cannot caption images: "
                                    "it does not generate text from an image. Load a vision-language text encoder "
                                    "(e.g. Qwen2.5-VL, Qwen3-VL, Qwen3.5, Gemma 3 with vision) with CLIPLoader")


def _sampling_mode(sampling: str, seed: int, temperature: float) -> dict:
    if sampling == "off":
        return {"sampling_mode": "off"}
    return {"sampling_mode": "on", "temperature": temperature, "top_k": 64, "top_p": 0.95, "min_p": 0.05,
            "repetition_penalty": 1.05, "seed": seed}


def caption_inputs() -> list:
    return [
        io.String.Input("trigger_word", default="", tooltip="Added to every caption (as the dataset loader adds it)."),
        io.String.Input("caption_template", default="",
                        tooltip="E.g. 'photo of {trigger}, {caption}'. Empty: trigger word, then the caption."),
        io.Boolean.Input("overwrite", default=False,
                         tooltip="Off: images that already have a caption file keep it. On: replace caption files."),
        io.String.Input("caption_extension", default=".txt", tooltip="Caption file ending, as the dataset loader reads it."),
    ]


class CaptionImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabCaptionImages", display_name="Caption Images", category="LoRA Lab",
            description="Caption a dataset folder's images with a vision-language text encoder (through ComfyUI's "
                        "'Generate Text' machinery) and write a .txt caption beside each image that has none.",
            is_output_node=True,
            inputs=[
                io.Clip.Input("clip", tooltip="A vision-language text encoder loaded with CLIPLoader."),
                folder_input("images"),
                io.String.Input("prompt", default=DEFAULT_PROMPT, multiline=True,
                                tooltip="What to ask about each image."),
                *caption_inputs(),
                io.Int.Input("max_length", default=96, min=1, max=4096, tooltip="Most tokens generated per caption."),
                io.Combo.Input("sampling", options=["on", "off"], default="on",
                               tooltip="on: sampled from the seed (the same seed gives the same captions); off: greedy."),
                io.Float.Input("temperature", default=0.7, min=0.01, max=2.0, step=0.01),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF),
                io.Int.Input("max_side", default=768, min=0, max=8192, step=8,
                             tooltip="Images are shrunk so their longer side is at most this before captioning "
                                     "(fewer image tokens); 0 keeps them as they are."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="What was written and what was kept."),
                io.String.Output(display_name="captions", is_output_list=True, tooltip="The captions made, in order."),
                io.String.Output(display_name="filenames", is_output_list=True,
                                 tooltip="Their images, relative to the folder (for Save Captions' filenames)."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, **kwargs):
        return folder_fingerprint(folder)

    @classmethod
    def validate_inputs(cls, folder=None):
        return validate_paths(folder)

    @classmethod
    def execute(cls, clip, folder, prompt, trigger_word, caption_template, overwrite, caption_extension, max_length,
                sampling, temperature, seed, max_side) -> io.NodeOutput:
        generate = text_generator()
        check_template(caption_template)
        root = resolve_dataset_folder(folder)
        images = dataset_images(root, caption_extension)
        todo = [image for image in images if overwrite or not image.captioned]
        report = SidecarReport(kept=[relative(i.sidecar, root) for i in images if i not in todo])
        captions, progress = [], comfy.utils.ProgressBar(max(1, len(todo)))
        for n, image in enumerate(todo):
            comfy.model_management.throw_exception_if_processing_interrupted()
            pixels = pixels_for_captioning(image.path, max_side)
            if n == 0:
                _check_clip(clip, prompt, pixels)
            out = generate.execute(clip=clip, prompt=prompt, max_length=max_length, image=pixels,
                                   sampling_mode=_sampling_mode(sampling, seed, temperature))
            captions.append(final_caption(out.args[0], trigger_word, caption_template))
            write_sidecars(root, [image], captions[-1:], overwrite, report)  # each at once: a cancel keeps them
            progress.update(1)
        text = report.text(root)
        log.info("LoRA Lab Caption Images: %s", text)
        return io.NodeOutput(text, captions, [relative(i.path, root) for i in todo], ui=ui.PreviewText(text))


class SaveCaptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabSaveCaptions", display_name="Save Captions", category="LoRA Lab",
            description="Write a list of captions (from any captioning node) as .txt files beside a dataset folder's "
                        "images, only where none exists unless overwrite is on.",
            is_output_node=True,
            is_input_list=True,
            inputs=[
                io.String.Input("captions", force_input=True, tooltip="One caption per image (a list)."),
                folder_input("images"),
                io.String.Input("filenames", force_input=True, optional=True,
                                tooltip="The image of each caption, relative to the folder (Caption Images' filenames "
                                        "output). Unconnected: the images directly in the folder, in the order "
                                        "ComfyUI's 'Load Image Dataset from Folder' loads them."),
                *caption_inputs(),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="What was written and what was kept.")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, **kwargs):
        return folder_fingerprint(folder[0] if isinstance(folder, list) else folder)

    @classmethod
    def validate_inputs(cls, folder=None):
        folders = folder if isinstance(folder, list) else [folder]
        for name in folders:
            result = validate_paths(name)
            if result is not True:
                return result
        return True

    @classmethod
    def execute(cls, captions, folder, trigger_word, caption_template, overwrite, caption_extension,
                filenames=None) -> io.NodeOutput:
        one = {k: v[0] for k, v in dict(folder=folder, trigger_word=trigger_word, caption_template=caption_template,
                                        overwrite=overwrite, caption_extension=caption_extension).items()}
        check_template(one["caption_template"])
        root = resolve_dataset_folder(one["folder"])
        images = (named_images(root, filenames, one["caption_extension"]) if filenames
                  else listed_images(root, one["caption_extension"]))
        texts = [final_caption(c, one["trigger_word"], one["caption_template"]) for c in captions]
        text = write_sidecars(root, images, texts, one["overwrite"]).text(root)
        log.info("LoRA Lab Save Captions: %s", text)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
