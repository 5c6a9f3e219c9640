"""Model families we convert LoRAs for, each with its name map and its ComfyUI-side naming choice."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import chroma, flux, hunyuan_video, lumina2, qwen_image, sana, sd3, sd_unet, text_encoders, wan, z_image
from .rule import Match, PassThroughIndex, Rule, RuleIndex


@dataclass
class Family:
    name: str
    rules: list[Rule]
    comfy_side: str = "original"          # which naming ComfyUI's loader expects for the denoiser (kohya flat form)
    diffusers_prefix: str = "transformer"  # diffusers pipeline component holding the denoiser
    # text encoder component -> (kohya prefix ComfyUI maps, diffusers pipeline component)
    text_encoders: dict[str, tuple[str, str]] = field(default_factory=dict)
    diffusers_supported: bool = True
    # ComfyUI maps `<slice_prefix><diffusers part name>` onto that part's rows of the fused weight
    # (comfy.lora.model_lora_keys_unet: (key, offset) entries), so a part can be written on its own.
    slice_prefix: str | None = None
    # highest block index + 1 per block list: a LoRA with a higher index belongs to another model
    block_limits: dict[str, int] = field(default_factory=dict)
    index: RuleIndex = field(init=False)

    def __post_init__(self):
        self.index = RuleIndex(self.rules) if self.rules else PassThroughIndex()

    def match(self, name: str, flat: bool) -> Match | None:
        return self.index.match(name, flat)

    @property
    def passthrough(self) -> bool:
        return not self.rules


TE_SD15 = {"te1": ("lora_te_", "text_encoder")}
TE_SDXL = {"te1": ("lora_te1_", "text_encoder"), "te2": ("lora_te2_", "text_encoder_2")}
TE_SD3 = {"te1": ("lora_te1_", "text_encoder"), "te2": ("lora_te2_", "text_encoder_2"), "te3": ("lora_te3_", "text_encoder_3")}
TE_FLUX = {"te1": ("lora_te1_", "text_encoder"), "te2": ("lora_te2_", "text_encoder_2")}

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("flux", flux.RULES, text_encoders=TE_FLUX, slice_prefix="transformer.", block_limits=flux.BLOCK_LIMITS),
    Family("chroma", chroma.RULES, text_encoders=TE_FLUX, slice_prefix="transformer.", block_limits=chroma.BLOCK_LIMITS),
    Family("sd3", sd3.RULES, text_encoders=TE_SD3, slice_prefix="transformer.", block_limits=sd3.BLOCK_LIMITS),
    Family("sana", sana.RULES),
    Family("wan", wan.RULES),
    # kohya keeps diffusers block names for SD1/2, and ComfyUI maps them: the ComfyUI side is diffusers-named.
    Family("sd15", sd_unet.rules_for(sd_unet.SD15), comfy_side="diffusers", diffusers_prefix="unet", text_encoders=TE_SD15),
    Family("sdxl", sd_unet.rules_for(sd_unet.SDXL), diffusers_prefix="unet", text_encoders=TE_SDXL),
    Family("hunyuan_video", hunyuan_video.RULES, block_limits=hunyuan_video.BLOCK_LIMITS),
    Family("qwen_image", qwen_image.RULES, block_limits=qwen_image.BLOCK_LIMITS),
    Family("lumina2", lumina2.RULES),
    Family("z_image", z_image.RULES, slice_prefix="transformer."),
)}

# A model ComfyUI loads but we have no map for: PEFT/kohya keys on its own module names pass through.
GENERIC = Family("generic", [], diffusers_supported=False)

TEXT_ENCODER_INDEX = RuleIndex(text_encoders.RULES)

ALIASES = {"sd1": "sd15", "sd1.5": "sd15", "sd15": "sd15", "sdxl": "sdxl", "sd3": "sd3", "sd3.5": "sd3", "flux": "flux",
           "flux1": "flux", "flux.1": "flux", "chroma": "chroma", "sana": "sana", "sana_600m": "sana",
           "sana_1600m": "sana", "wan": "wan", "wan2.1": "wan", "wan2.2": "wan", "wan21": "wan", "wan22": "wan",
           "hunyuan_video": "hunyuan_video", "hunyuanvideo": "hunyuan_video", "hunyuan": "hunyuan_video",
           "qwen_image": "qwen_image", "qwen": "qwen_image", "qwenimage": "qwen_image", "lumina2": "lumina2",
           "lumina_2": "lumina2", "lumina": "lumina2", "z_image": "z_image", "zimage": "z_image", "generic": "generic"}

ARCH_CHOICES = sorted(FAMILIES) + ["generic"]


def get_family(name: str) -> Family:
    from ...lora_core.errors import LoraFormatError

    key = ALIASES.get(name.lower().replace("-", "_").replace(" ", ""))
    if key is None:
        raise LoraFormatError(f"unknown --arch {name!r}; choose one of {ARCH_CHOICES}")
    return GENERIC if key == "generic" else FAMILIES[key]
