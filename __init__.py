"""LoRA Lab: train, convert and apply LoRAs inside ComfyUI graphs.

ComfyUI imports this file from ``custom_nodes/<folder>/``; pip installs it as ``lora_lab``.
Nothing heavy is imported here: the node classes (which need ComfyUI) load only when ComfyUI
asks for them through ``comfy_entrypoint``, so ``import lora_lab.lora_core`` works without ComfyUI.

Two copies of the pack in one server (a manual clone beside a ComfyUI-Manager install) would register the
same routes twice, which stops ComfyUI at start-up: the copy ComfyUI loads second registers nothing (no
nodes, routes or web extension) and says so, naming both folders.
"""

import logging
import os
import sys

from .lora_core.version import __version__

_FOLDER = os.path.dirname(os.path.abspath(__file__))


def _registered_copy() -> str | None:
    """The folder of a LoRA Lab copy that already registered its nodes in this process (another module)."""
    for module in list(sys.modules.values()):
        folder = getattr(module, "__dict__", {}).get("LORA_LAB_REGISTERED_FROM")
        if folder and module.__dict__ is not globals():
            return folder
    return None


WEB_DIRECTORY = "./web" if _registered_copy() is None else None


async def comfy_entrypoint():
    first = _registered_copy()
    if first is not None:
        logging.getLogger("lora_lab").warning(
            "LoRA Lab is installed twice: %s is in use and the copy in %s was not loaded. Remove one of the two "
            "folders from custom_nodes.", first, _FOLDER)
        from .nodes.extension import EmptyExtension

        return EmptyExtension()
    from .nodes.extension import LoraLabExtension

    globals()["LORA_LAB_REGISTERED_FROM"] = _FOLDER
    return LoraLabExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint", "__version__"]
