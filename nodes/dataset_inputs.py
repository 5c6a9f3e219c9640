"""What the image and video dataset nodes share: their common inputs, and turning them into lora_core options."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from comfy_api.latest import io

from ..lora_core.data.buckets import BucketConfig
from ..lora_core.errors import LoraLabError
from .comfy_paths import dataset_folder_options, resolve_cache_folder, resolve_dataset_folder
from .dataset_options import BUCKET_DEFAULTS, CAPTION_DEFAULTS, caption_transforms
from .types import AUGMENTATION, BUCKET_OPTIONS, CAPTION_OPTIONS, DATASET

DEFAULT_CACHE = "lora_lab_cache"
log = logging.getLogger("lora_lab")


def folder_input(what: str) -> io.Combo.Input:
    """The dataset folder: a dropdown of input/ (and datasets) subfolders; a typed name is checked by
    validate_paths instead of ComfyUI's list check, so a folder made after the page loaded still works."""
    return io.Combo.Input("folder", options=dataset_folder_options(),
                          tooltip=f"A folder of {what} under ComfyUI's input directory (or its datasets folders, "
                                  "marked [datasets]). Paths outside those folders are refused.")


def validate_paths(folder: str | None = None, cache_folder: str | None = None) -> bool | str:
    """ComfyUI's validate_inputs: every path the prompt names stays inside ComfyUI's folders (values arriving
    through links are checked when the node runs)."""
    try:
        if isinstance(folder, str):
            resolve_dataset_folder(folder)
        if isinstance(cache_folder, str):
            resolve_cache_folder(cache_folder)
    except LoraLabError as error:
        return str(error)
    return True


def caption_inputs() -> list:
    return [
        io.String.Input("trigger_word", default="", tooltip="Your concept's token; {trigger} in the template. Without a "
                                                           "template it is prepended to every caption (once)."),
        io.String.Input("caption_template", default="",
                        tooltip="E.g. 'photo of {trigger}, {caption}'. Empty: trigger word + caption."),
        io.String.Input("default_caption", default="",
                        tooltip="Caption for files that have no caption file (and no default_caption.txt in their folder)."),
    ]


def common_inputs() -> list:
    return [
        io.Float.Input("validation", default=0.0, min=0.0, max=100000.0, step=0.05,
                       tooltip="Held out for validation loss, never trained on: a fraction of the files (below 1) or "
                               "a number of files (1 or more). 0 = none."),
        io.String.Input("cache_folder", default=DEFAULT_CACHE,
                        tooltip="Where latents and caption encodings are cached: a folder name under ComfyUI's user "
                                "directory. Empty: memory only. Clear it with 'Encoding Cache'."),
        BUCKET_OPTIONS.Input("bucket_options", optional=True, tooltip="From 'Bucket Options' (defaults otherwise)."),
        CAPTION_OPTIONS.Input("caption_options", optional=True, tooltip="From 'Caption Options'."),
        AUGMENTATION.Input("augmentation", optional=True, tooltip="From 'Augmentation' (none otherwise)."),
    ]


def dataset_outputs() -> list:
    return [
        DATASET.Output(display_name="dataset"),
        io.String.Output(display_name="summary", tooltip="Counts, buckets, validation, cache folder and warnings."),
        io.String.Output(display_name="captions", is_output_list=True,
                         tooltip="One caption per file (training, then validation): connect it to any text encoder "
                                 "(CLIPTextEncode, SanaTextEncode, ...) and its output to Train LoRA's conditioning."),
    ]


def bucket_config(aspect_buckets: bool, resolution: int, options: dict | None) -> BucketConfig | None:
    if not aspect_buckets:
        return None
    o = {**BUCKET_DEFAULTS, **(options or {})}
    return BucketConfig(resolution, min_side=o["min_bucket_side"], max_side=o["max_bucket_side"], step=o["bucket_step"])


def small_images(options: dict | None) -> str:
    return {**BUCKET_DEFAULTS, **(options or {})}["small_images"]


def caption_extension(options: dict | None) -> str:
    return {**CAPTION_DEFAULTS, **(options or {})}["caption_extension"]


def loader_options(resolution: int, aspect_buckets: bool, cache_folder: str, bucket_options: dict | None,
                   caption_options: dict | None, augmentation) -> dict:
    """The keyword arguments both folder loaders (load_image_folder, load_video_folder) take from the shared
    inputs and option nodes."""
    return dict(caption_extension=caption_extension(caption_options),
                buckets=bucket_config(aspect_buckets, resolution, bucket_options),
                small_images=small_images(bucket_options), caption_transforms=caption_transforms(caption_options),
                augment=augmentation, cache_folder=resolve_cache_folder(cache_folder))


def dataset_output(dataset, what: str) -> io.NodeOutput:
    """Log the dataset's warnings ("LoRA Lab <what>: ...") and return the outputs of dataset_outputs()."""
    for warning in dataset.warnings:
        log.warning("LoRA Lab %s: %s", what, warning)
    return io.NodeOutput(dataset, dataset.summary(), dataset.captions())


def folder_fingerprint(folder: str) -> str:
    """Changes when any file under the folder (two levels, plus frame folders) is added, removed or modified,
    so ComfyUI runs the dataset node again instead of reusing its cached output."""
    try:
        root = resolve_dataset_folder(folder)
    except LoraLabError as error:  # refused: the node's run says why
        return f"refused:{error}"
    h = hashlib.blake2b(digest_size=16)
    try:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if len(Path(dirpath).relative_to(root).parts) > 2:
                continue
            for name in sorted(filenames):
                stat = os.stat(os.path.join(dirpath, name))
                h.update(f"{dirpath}/{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    except OSError as error:
        return f"unreadable:{error}"
    return h.hexdigest()
