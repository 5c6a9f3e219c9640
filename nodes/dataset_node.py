"""Load Training Images: a folder of images + captions -> a dataset for Train LoRA (buckets, captions, cache)."""

from __future__ import annotations

from comfy_api.latest import io

from ..lora_core.data.dataset import load_image_folder
from .comfy_paths import resolve_dataset_folder
from .control_options import CONTROL_OPTIONS
from .dataset_inputs import (caption_inputs, common_inputs, dataset_output, dataset_outputs, folder_fingerprint,
                             folder_input, loader_options, validate_paths)
from .types import MASK_OPTIONS


class LoadTrainingImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabDataset",
            display_name="Load Training Images",
            category="LoRA Lab",
            description="Reads png/jpg/jpeg/webp images with same-name caption files; kohya 'N_name' folders repeat "
                        "their images N times. Images are placed in aspect-ratio buckets; pixels are decoded only when "
                        "Train LoRA encodes them, and encodings are cached.",
            inputs=[
                folder_input("images"),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=8,
                             tooltip="Base training resolution: buckets hold about resolution² pixels. With aspect "
                                     "buckets off, images are resized (shorter side) and center-cropped to it."),
                io.Boolean.Input("aspect_buckets", default=True,
                                 tooltip="Group images by aspect ratio (kohya-style buckets): each is resized and cropped "
                                         "as little as its shape allows, and each batch comes from one bucket."),
                *caption_inputs(),
                *common_inputs(),
                MASK_OPTIONS.Input("mask_options", optional=True,
                                   tooltip="From 'Mask Options': a loss mask per image (none otherwise)."),
                CONTROL_OPTIONS.Input("control_options", optional=True,
                                      tooltip="From 'Control Images': edit pairs, each image with the control images "
                                              "the model sees as references (none otherwise)."),
            ],
            outputs=dataset_outputs(),
        )

    @classmethod
    def fingerprint_inputs(cls, folder, **kwargs):
        return folder_fingerprint(folder)

    @classmethod
    def validate_inputs(cls, folder=None, cache_folder=None):  # no **kwargs: ComfyUI keeps checking the rest
        return validate_paths(folder, cache_folder)

    @classmethod
    def execute(cls, folder, resolution, trigger_word, default_caption, aspect_buckets=True, caption_template="",
                validation=0.0, cache_folder="", bucket_options=None, caption_options=None,
                augmentation=None, mask_options=None, control_options=None) -> io.NodeOutput:
        dataset = load_image_folder(
            resolve_dataset_folder(folder), resolution, trigger_word=trigger_word, default_caption=default_caption,
            caption_template=caption_template, validation=validation, masks=mask_options, pairs=control_options,
            **loader_options(resolution, aspect_buckets, cache_folder, bucket_options, caption_options, augmentation))
        return dataset_output(dataset, "dataset")
