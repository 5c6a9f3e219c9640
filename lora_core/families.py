"""The model families LoRA Lab knows by name: how ComfyUI's model config classes name them, which diffusers class
`lora-lab train` loads for them, and what a LoRA's header says about them (kohya's ss_base_model_version,
modelspec's architecture and implementation). The one table of families; the converters keep their key-name maps
per family in converters/families/.

Any other model ComfyUI loads trains too: it keeps its config class's name (nodes/family.py) and default
metadata ("<name>/lora").
"""

from __future__ import annotations

from dataclasses import dataclass

_SAI = "https://github.com/Stability-AI/generative-models"


@dataclass(frozen=True)
class Family:
    name: str
    # ComfyUI supported_models class-name prefixes (their subclasses too); a name ending in "$" matches only that
    # class (HiDream, not HiDreamO1; HunyuanVideo15, not its super-resolution model)
    comfy_configs: tuple[str, ...] = ()
    diffusers_denoiser: str = ""  # the diffusers class lora-lab train loads ("": not trained from the command line)
    ss_base_model: str = ""  # kohya's ss_base_model_version ("": the family's name)
    architecture: str = ""  # modelspec.architecture ("": "<name>/lora")
    implementation: str = ""  # modelspec.implementation


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd15", ("SD15",), "UNet2DConditionModel", "sd_v1", "stable-diffusion-v1/lora", _SAI),
    Family("sdxl", ("SDXL", "SDXLRefiner", "SSD1B"), "UNet2DConditionModel", "sdxl_base_v1-0",
           "stable-diffusion-xl-v1-base/lora", _SAI),
    Family("sd3", ("SD3",), "SD3Transformer2DModel", "sd3", "sd3/lora", "https://github.com/Stability-AI/sd3.5"),
    Family("flux", ("Flux", "FluxSchnell", "FluxInpaint"), "FluxTransformer2DModel", "flux1", "flux-1-dev/lora",
           "https://github.com/black-forest-labs/flux"),
    Family("flux2", ("Flux2",)),
    Family("sana", (), "SanaTransformer2DModel", "sana", "sana/lora", "https://github.com/NVlabs/Sana"),
    Family("wan", ("WAN",), "WanTransformer3DModel", "wan2.1", "wan-2.1/lora", "https://github.com/Wan-Video/Wan2.1"),
    Family("hunyuan_video", ("HunyuanVideo",)),
    # ComfyUI models whose LoRAs the converters name (converters/families/): no trainer entry, default metadata
    Family("anima", ("Anima$",)),
    Family("krea2", ("Krea2$",)),
    Family("hidream", ("HiDream$",)),
    Family("kandinsky5", ("Kandinsky5",)),
    Family("hunyuan_image21", ("HunyuanImage21$",)),  # a HunyuanVideo subclass in ComfyUI: named before it
    Family("hunyuan_video15", ("HunyuanVideo15$",)),
    Family("ltx2", ("LTXAV$",)),
)}


def family_of_comfy_config(class_names: list[str]) -> str | None:
    """The family of a ComfyUI model config, from its class and base class names (most derived first): the
    longest prefix that matches wins (Flux2 before Flux); "Name$" matches that class only."""
    prefixes = sorted(((p, f.name) for f in FAMILIES.values() for p in f.comfy_configs), key=lambda pf: -len(pf[0]))
    for name in class_names:
        for prefix, family in prefixes:
            if name == prefix[:-1] if prefix.endswith("$") else name.startswith(prefix):
                return family
    return None


def cli_families() -> tuple[str, ...]:
    """The families `lora-lab train` loads from a diffusers folder."""
    return tuple(f.name for f in FAMILIES.values() if f.diffusers_denoiser)


def modelspec(family: str) -> tuple[str, str, str]:
    """(ss_base_model_version, modelspec.architecture, modelspec.implementation) for a LoRA's header."""
    f = FAMILIES.get(family, Family(family))
    return f.ss_base_model or family, f.architecture or f"{family}/lora", f.implementation
