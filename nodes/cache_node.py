"""Encoding Cache: how much a cache folder holds, or clear it."""

from __future__ import annotations

from comfy_api.latest import io

from ..lora_core.errors import DatasetError
from ..lora_core.cache.encoding_cache import cache_usage, clear_cache
from .comfy_paths import resolve_cache_folder
from .dataset_inputs import DEFAULT_CACHE, validate_paths


class EncodingCacheNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabCache",
            display_name="Encoding Cache",
            category="LoRA Lab/dataset",
            description="Reports the size of a latent / caption-encoding cache folder, or clears it: only files the "
                        "cache can prove it wrote are deleted (its tag on the folder, its header in each file); anything "
                        "else is left and named. The same as `lora-lab cache FOLDER [--clear]`.",
            is_output_node=True,
            inputs=[
                io.String.Input("cache_folder", default=DEFAULT_CACHE,
                                tooltip="As on the dataset node: a folder name under ComfyUI's user directory."),
                io.Combo.Input("action", options=["report", "clear"], default="report"),
            ],
            outputs=[io.String.Output(display_name="report")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # the folder changes behind ComfyUI's back: always run

    @classmethod
    def validate_inputs(cls, cache_folder=None):
        return validate_paths(cache_folder=cache_folder)

    @classmethod
    def execute(cls, cache_folder, action) -> io.NodeOutput:
        folder = resolve_cache_folder(cache_folder)
        if folder is None:
            return io.NodeOutput("No cache folder: encodings are kept in memory only.")
        if not folder.is_dir():
            return io.NodeOutput(f"{folder}: no cache there yet.")
        if action == "clear":
            try:
                return io.NodeOutput(f"Cleared {clear_cache(folder)}")
            except DatasetError as error:
                raise DatasetError(f"cache_folder {cache_folder!r}: {error}") from None
        return io.NodeOutput(str(cache_usage(folder)))
