"""Which model family a ComfyUI MODEL is, from its model config class (ComfyUI's own detection)."""

from __future__ import annotations

# ComfyUI supported_models class name prefix -> LoRA Lab family name (metadata, targets, file naming).
_FAMILIES = (
    ("SD15", "sd15"),
    ("SDXLRefiner", "sdxl"),
    ("SDXL", "sdxl"),
    ("SSD1B", "sdxl"),
    ("SD3", "sd3"),
    ("FluxSchnell", "flux"),
    ("FluxInpaint", "flux"),
    ("Flux2", "flux2"),
    ("Flux", "flux"),
    ("WAN", "wan"),
    ("HunyuanVideo", "hunyuan_video"),
)


def model_family(patcher) -> str:
    """Family name of a ModelPatcher's model; unknown models keep their config class name.

    The config class's MRO is searched so that subclasses (Segmind_Vega, SSD1B -> SDXL; WAN22_T2V -> WAN21)
    resolve to their family.
    """
    config_class = type(patcher.model.model_config)
    for cls in config_class.__mro__:
        for prefix, family in _FAMILIES:
            if cls.__name__.startswith(prefix):
                return family
    # Third-party loaders (e.g. Sana through ComfyUI_ExtraModels) have their own config classes.
    if "sana" in config_class.__name__.lower() or "sana" in type(patcher.model).__name__.lower():
        return "sana"
    return config_class.__name__.lower()
