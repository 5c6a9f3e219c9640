"""Which model family a ComfyUI MODEL is, from its model config class (ComfyUI's own detection)."""

from __future__ import annotations

from ..lora_core.families import family_of_comfy_config


def model_family(patcher) -> str:
    """Family name of a ModelPatcher's model; unknown models keep their config class name.

    The config class's MRO is searched so that subclasses (Segmind_Vega, SSD1B -> SDXL; WAN22_T2V -> WAN21)
    resolve to their family.
    """
    config_class = type(patcher.model.model_config)
    family = family_of_comfy_config([cls.__name__ for cls in config_class.__mro__])
    if family is not None:
        return family
    # Third-party loaders (e.g. Sana through ComfyUI_ExtraModels) have their own config classes.
    if "sana" in config_class.__name__.lower() or "sana" in type(patcher.model).__name__.lower():
        return "sana"
    return config_class.__name__.lower()
