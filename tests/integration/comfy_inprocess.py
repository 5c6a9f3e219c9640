"""Calling ComfyUI nodes in this process (no server): fast node-level tests.

Use through the ``comfy`` fixture (conftest.py), which makes ComfyUI importable with args.cpu=True first.

    model, clip, vae = load_checkpoint(path)
    out = call_node("LoraLabTrain", model=model, clip=clip, ...)   # -> tuple of outputs
Nodes run as ComfyUI runs them: under torch.inference_mode(), V3 nodes through a prepared class clone.
"""

from __future__ import annotations

import inspect
from pathlib import Path


def use_input_and_user_dirs(root: Path) -> None:
    """ComfyUI's input and user directories at `root` (a test's temp tree): datasets and caches the tests make
    there lie inside ComfyUI's folders, where the pack requires a prompt's paths to stay."""
    import folder_paths

    folder_paths.set_input_directory(str(root))
    folder_paths.set_user_directory(str(root))


def load_checkpoint(path: Path):
    """(MODEL, CLIP, VAE) of a checkpoint file, as CheckpointLoaderSimple returns them."""
    import comfy.sd

    out = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    return out[0], out[1], out[2]


def node_class(name_or_class):
    """A registered node class by name (ComfyUI's built-ins plus anything registered in nodes.NODE_CLASS_MAPPINGS)."""
    if not isinstance(name_or_class, str):
        return name_or_class
    import nodes

    if name_or_class not in nodes.NODE_CLASS_MAPPINGS:
        raise KeyError(f"node {name_or_class!r} is not registered in this process "
                       f"(call register_lora_lab_nodes() or load_builtin_extras() first)")
    return nodes.NODE_CLASS_MAPPINGS[name_or_class]


def call_node(name_or_class, *, unique_id: str = "1", inference_mode: bool = True, **inputs) -> tuple:
    """Run one node like ComfyUI's executor does (inside inference_mode) and return its outputs as a tuple.

    Lists are passed through unchanged: for is_input_list nodes wrap each value in a list yourself.
    """
    import torch
    from comfy_api.internal import _ComfyNodeInternal

    cls = node_class(name_or_class)
    with torch.inference_mode(inference_mode):
        if inspect.isclass(cls) and issubclass(cls, _ComfyNodeInternal):
            from comfy_api.internal import make_locked_method_func
            from comfy_execution.utils import CurrentNodeContext

            cls.VALIDATE_CLASS()
            v3_data = {"hidden_inputs": {"UNIQUE_ID": unique_id}, "dynamic_paths": {}, "create_dynamic_tuple": False}
            run = make_locked_method_func(cls, "EXECUTE_NORMALIZED", cls.PREPARE_CLASS_CLONE(v3_data))
            with CurrentNodeContext("inprocess", unique_id, 0):
                result = run(**inputs)
            if inspect.iscoroutine(result):
                import asyncio

                result = asyncio.run(result)
            return tuple(result.result) if result.result is not None else ()
        instance = cls()
        result = getattr(instance, cls.FUNCTION)(**inputs)
        if isinstance(result, dict):
            return tuple(result.get("result", ()))
        return tuple(result)


def load_builtin_extras(names: tuple[str, ...] = ("nodes_train.py", "nodes_dataset.py")) -> None:
    """Register some of ComfyUI's comfy_extras nodes (e.g. TrainLoraNode) in this process."""
    import asyncio
    import os

    import nodes

    extras = os.path.join(os.path.dirname(os.path.realpath(nodes.__file__)), "comfy_extras")
    for name in names:
        asyncio.run(nodes.load_custom_node(os.path.join(extras, name), module_parent="comfy_extras"))


def register_lora_lab_nodes() -> list[str]:
    """Register this checkout's LoRA Lab nodes in this process (as ComfyUI would load the custom node)."""
    import asyncio

    import nodes

    from .comfy_env import REPO_ROOT

    before = set(nodes.NODE_CLASS_MAPPINGS)
    ok = asyncio.run(nodes.load_custom_node(str(REPO_ROOT), module_parent="custom_nodes"))
    if not ok:
        raise RuntimeError(f"ComfyUI could not load {REPO_ROOT} as a custom node (see the log above)")
    return sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
