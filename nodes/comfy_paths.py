"""Where the nodes read and write: ComfyUI's input folder for datasets, ``models/loras`` for LoRAs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import folder_paths

from ..lora_core.errors import DatasetError, LoraLabError

_UNSAFE_NAME = re.compile(r"(^|[\\/])\.\.([\\/]|$)")


def resolve_dataset_folder(folder: str) -> Path:
    """An absolute path as given, else a folder name under ComfyUI's input directory."""
    folder = folder.strip()
    if not folder:
        raise DatasetError("No dataset folder given: name a folder under ComfyUI's input directory or an absolute path.")
    path = Path(folder).expanduser()
    if not path.is_absolute():
        path = Path(folder_paths.get_input_directory()) / path
    return path


def lora_output_name(name: str) -> str:
    """Validate a LoRA output name: no '..', no separators, no absolute paths; '.safetensors' optional."""
    name = name.strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not name:
        raise LoraLabError("The LoRA output name is empty.")
    if "/" in name or "\\" in name or _UNSAFE_NAME.search(name) or name.startswith(".") or os.path.isabs(name):
        raise LoraLabError(
            f"LoRA output name {name!r} is not allowed: use a plain file name without '/', '\\' or '..' "
            "(files are always written to models/loras)."
        )
    return name


def loras_directory() -> Path:
    """The first folder ComfyUI lists for 'loras' (models/loras unless extra_model_paths says otherwise)."""
    return Path(folder_paths.get_folder_paths("loras")[0])


def unused_lora_path(name: str) -> Path:
    """``loras/<name>.safetensors``, or ``<name>_00001.safetensors``... if that exists: never overwrite."""
    directory = loras_directory()
    directory.mkdir(parents=True, exist_ok=True)
    base = lora_output_name(name)
    candidate = directory / f"{base}.safetensors"
    counter = 1
    while candidate.exists():
        candidate = directory / f"{base}_{counter:05d}.safetensors"
        counter += 1
    return candidate
