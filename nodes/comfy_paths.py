"""Where the nodes read and write, and the rule that keeps every path a prompt names inside ComfyUI's folders.

Anyone who can reach the server, or who shares a workflow, chooses these names, so each is checked:
  datasets      a folder under ComfyUI's input directory, or under its "datasets" folders (August 2026 on; any
                ComfyUI with a `datasets:` entry in extra_model_paths.yaml) or a folder the server's operator
                lists in $LORA_LAB_DATASET_ROOTS; shown as "name" (input) and "name [datasets]"
  cache_folder  a folder under ComfyUI's user directory
  resume_from   a LoRA or its training state under models/loras
  LoRA outputs  a plain file name, always written to models/loras
A name may be relative to its root or an absolute path inside it; links are followed before the check, so a
link cannot lead out. The command line is a local user's tool and keeps full paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import folder_paths

from ..lora_core.errors import DatasetError, LoraLabError

DATASETS_TAG = " [datasets]"
DATASET_ROOTS_ENV = "LORA_LAB_DATASET_ROOTS"
_UNSAFE_NAME = re.compile(r"(^|[\\/])\.\.([\\/]|$)")


class PathNotAllowed(LoraLabError):
    """A path from a prompt that lies outside the ComfyUI folders it must stay in."""


def inside(root: str | os.PathLike, name: str) -> Path | None:
    """`name` (relative to `root`, or absolute) resolved with links followed, if it stays inside `root`."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, name))  # an absolute name replaces the root
    try:
        common = os.path.commonpath([os.path.normcase(real_root), os.path.normcase(real)])
    except ValueError:  # Windows: another drive
        return None
    return Path(real) if common == os.path.normcase(real_root) else None


def dataset_roots() -> list[Path]:
    """ComfyUI's "datasets" folders (where this version or extra_model_paths.yaml has them), then the
    operator's $LORA_LAB_DATASET_ROOTS (os.pathsep-separated)."""
    comfy = folder_paths.folder_names_and_paths.get("datasets", ([], set()))[0]
    extra = [p for p in os.environ.get(DATASET_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return [Path(p) for p in [*comfy, *extra]]


def _subfolders(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(os.path.relpath(d, root).replace(os.sep, "/") for d, _, _ in os.walk(root) if Path(d) != root)


def dataset_folder_options() -> list[str]:
    """The dropdown: input/ subfolders as ComfyUI's own dataset nodes list them, then each datasets folder's."""
    tagged = [name + DATASETS_TAG for root in dataset_roots() for name in _subfolders(root)]
    return folder_paths.get_input_subfolders() + sorted(set(tagged))


def resolve_dataset_folder(folder: str, what: str = "folder") -> Path:
    """The dataset folder a prompt names, or PathNotAllowed naming the input and where datasets belong."""
    text = folder.strip()
    if not text:
        raise DatasetError(f"{what}: no dataset folder given; {_where_datasets_go()}")
    input_dir = Path(folder_paths.get_input_directory())
    roots = dataset_roots() if text.endswith(DATASETS_TAG) else [input_dir, *dataset_roots()]
    name = text[: -len(DATASETS_TAG)] if text.endswith(DATASETS_TAG) else text
    found = [p for p in (inside(root, name) for root in roots) if p is not None]
    if not found:
        raise PathNotAllowed(f"{what} {folder!r} is outside the folders datasets may be read from; {_where_datasets_go()}")
    return next((p for p in found if p.is_dir()), found[0])


def _where_datasets_go() -> str:
    roots = ", ".join(str(r) for r in dataset_roots())
    return (f"put the dataset in a folder under ComfyUI's input directory ({folder_paths.get_input_directory()})"
            + (f" or under {roots}" if roots else "")
            + f" and choose it by name. The server's operator can allow more folders with ${DATASET_ROOTS_ENV} "
            "or a 'datasets:' entry in extra_model_paths.yaml.")


def resolve_cache_folder(text: str) -> Path | None:
    """A cache folder under ComfyUI's user directory (None: cache in memory only)."""
    text = text.strip()
    if not text:
        return None
    user = folder_paths.get_user_directory()
    path = inside(user, text)
    if path is None or path == Path(os.path.realpath(user)):
        raise PathNotAllowed(f"cache_folder {text!r} is not a folder inside ComfyUI's user directory ({user}): "
                             "give a folder name such as 'lora_lab_cache' (caches live under the user directory), "
                             "or leave it empty to cache in memory only.")
    return path


def loras_directories() -> list[Path]:
    return [Path(p) for p in folder_paths.get_folder_paths("loras")]


def resolve_in_loras(text: str, what: str) -> Path:
    """A file under one of the loras folders (the first that holds it), named relative to it or absolutely."""
    found = [p for p in (inside(root, text) for root in loras_directories()) if p is not None]
    if not found:
        raise PathNotAllowed(f"{what} {text!r} is outside models/loras: choose a LoRA or training state there "
                             f"({', '.join(str(d) for d in loras_directories())}).")
    return next((p for p in found if p.exists()), found[0])


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
    return loras_directories()[0]


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
