"""Control Images: the option node that makes 'Load Training Images' a paired dataset for edit models (Flux Kontext,
Flux 2, Qwen-Image edit, ...): each image is the target, its control images the references the model sees."""

from __future__ import annotations

from comfy_api.latest import io

from ..lora_core.data.pairs import PairConfig
from ..lora_core.errors import LoraLabError
from .comfy_paths import dataset_folder_options, resolve_dataset_folder
from .dataset_inputs import folder_fingerprint

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
