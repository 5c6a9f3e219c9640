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
    """Family name of a ModelPatcher's model; unknown models keep their config class name."""
    config_name = type(patcher.model.model_config).__name__
    for prefix, family in _FAMILIES:
        if config_name.startswith(prefix):
            return family
    # Third-party loaders (e.g. Sana through ComfyUI_ExtraModels) have their own config classes.
    if "sana" in config_name.lower() or "sana" in type(patcher.model).__name__.lower():
        return "sana"
    return config_name.lower()
