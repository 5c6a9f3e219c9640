"""Control Images: the option node that makes 'Load Training Images' a paired dataset for edit models (Flux Kontext,
Flux 2, Qwen-Image edit, ...): each image is the target, its control images the references the model sees."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..lora_core.data.image_io import decode_rgb
from ..lora_core.data.pairs import PairConfig
from ..lora_core.errors import DatasetError, LoraLabError
from .comfy_paths import dataset_folder_options, resolve_dataset_folder
from .dataset_inputs import folder_fingerprint
from .types import DATASET

CONTROL_OPTIONS = io.Custom("LORA_LAB_CONTROL_OPTIONS")  # lora_core.data.pairs.PairConfig
BESIDE = "(control/ beside the images)"


class ControlImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabControlImages",
            display_name="Control Images",
            category="LoRA Lab/dataset",
            description="Edit pairs for 'Load Training Images': each image is what the model should make, its control "
                        "images what it sees (Flux Kontext, Flux 2, Qwen-Image edit: Train LoRA passes them as "
                        "ReferenceLatent does). Controls have the image's name in control/ (more in control_2/, ...) "
                        "beside the images, or in a second folder laid out like the dataset. Flips and jitter apply "
                        "to both; their latents are cached like the images'.",
            inputs=[
                io.Combo.Input("control_folder", options=[BESIDE, *dataset_folder_options()], default=BESIDE,
                               tooltip="Where the controls are: control/, control_2/, ... folders beside the images "
                                       "(and in each repeat folder), or a second folder under ComfyUI's input "
                                       "directory whose files and repeat folders have the dataset's names."),
                io.Int.Input("control_resolution", default=0, min=0, max=4096, step=8,
                             tooltip="0: each control is resized and cropped to its image's bucket (the pair stays "
                                     "aligned; its aspect must match). N: each control gets a bucket of its own of "
                                     "about N² pixels, for models that take references of any size (all of Kontext, "
                                     "Flux 2 and Qwen-Image edit do)."),
            ],
            outputs=[CONTROL_OPTIONS.Output(display_name="control_options")],
        )

    @classmethod
    def fingerprint_inputs(cls, control_folder, **kwargs):
        return "" if control_folder == BESIDE else folder_fingerprint(control_folder)

    @classmethod
    def validate_inputs(cls, control_folder=None):  # no **kwargs: ComfyUI keeps checking the rest
        if isinstance(control_folder, str) and control_folder != BESIDE:
            try:
                resolve_dataset_folder(control_folder, "control_folder")
            except LoraLabError as error:
                return str(error)
        return True

    @classmethod
    def execute(cls, control_folder, control_resolution) -> io.NodeOutput:
        folder = None if control_folder == BESIDE else resolve_dataset_folder(control_folder, "control_folder")
        return io.NodeOutput(PairConfig(folder=folder, resolution=control_resolution))


class DatasetControlImages(io.ComfyNode):
    """The controls as pictures, one per caption: what an encoder that also sees the image (TextEncodeQwenImageEdit's
    image input) takes beside the captions list, so its conditioning list matches the pairs."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabDatasetControlImages",
            display_name="Dataset Control Images",
            category="LoRA Lab/dataset",
            description="A paired dataset's control images as a list, in the order of its captions output (training, "
                        "then validation), each whole at its own size: connect it with the captions to an encoder "
                        "that sees the image too (TextEncodeQwenImageEdit, without its vae: Train LoRA gives each "
                        "sample its reference latents itself).",
            inputs=[
                DATASET.Input("dataset", tooltip="From 'Load Training Images' with 'Control Images'."),
                io.Int.Input("reference", default=1, min=1, max=16,
                             tooltip="Which control: 1 = control/, 2 = control_2/, ..."),
            ],
            outputs=[io.Image.Output(display_name="images", is_output_list=True)],
        )

    @classmethod
    def execute(cls, dataset, reference) -> io.NodeOutput:
        if getattr(dataset, "pairs", None) is None:
            raise DatasetError("This dataset has no control images: connect 'Control Images' to Load Training Images")
        images = []
        for item in dataset.all_items():
            if len(item.controls) < reference:
                raise DatasetError(f"{item.path.name} has {len(item.controls)} control image(s), not a {reference}th")
            images.append(torch.from_numpy(decode_rgb(item.controls[reference - 1].path))[None])
        return io.NodeOutput(images)
