"""Load Training Images: a folder of images + captions -> a dataset for Train LoRA."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..lora_core.dataset import load_image_folder
from .comfy_paths import resolve_dataset_folder
from .types import DATASET

log = logging.getLogger("lora_lab")


class LoadTrainingImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabDataset",
            display_name="Load Training Images",
            category="LoRA Lab",
            description="Reads png/jpg/jpeg/webp images with same-name .txt captions; kohya 'N_name' folders "
                        "repeat their images N times.",
            inputs=[
                io.String.Input("folder", default="training",
                                tooltip="A folder under ComfyUI's input directory, or an absolute path."),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=64,
                             tooltip="Training resolution: images are resized (shorter side) and center-cropped."),
                io.String.Input("trigger_word", default="",
                                tooltip="Prepended to every caption (once)."),
                io.String.Input("default_caption", default="",
                                tooltip="Caption for images that have no .txt file."),
            ],
            outputs=[DATASET.Output(display_name="dataset"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, folder, resolution, trigger_word, default_caption) -> io.NodeOutput:
        dataset = load_image_folder(resolve_dataset_folder(folder), resolution, trigger_word=trigger_word,
                                    default_caption=default_caption)
        for warning in dataset.warnings:
            log.warning("LoRA Lab dataset: %s", warning)
        return io.NodeOutput(dataset, dataset.summary())
