"""LoRA Lab: train, convert and apply LoRAs inside ComfyUI graphs.

ComfyUI imports this file from ``custom_nodes/<folder>/``; pip installs it as ``lora_lab``.
Nothing heavy is imported here: the node classes (which need ComfyUI) load only when ComfyUI
asks for them through ``comfy_entrypoint``, so ``import lora_lab.lora_core`` works without ComfyUI.
"""

__version__ = "0.1.0"

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import LoraLabExtension

    return LoraLabExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint", "__version__"]
