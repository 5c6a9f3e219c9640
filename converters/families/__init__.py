"""Model families we convert LoRAs for, each with its name map and its ComfyUI-side naming choice."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from . import (anima, chroma, flux, flux2, hidream, hunyuan_image21, hunyuan_video, hunyuan_video15, kandinsky5, krea2,
               llm_text_encoders as llm, ltx2, ltxv, lumina2, qwen_image, sana, sd3, sd_unet, text_encoders, wan,
               z_image)
from .rule import Match, PassThroughIndex, Rule, RuleIndex
from .sizes import Ratio, Variant


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
    # evidence besides names (sizes.py): released sizes, which modules read the hidden width, fixed shape ratios
    sizes: tuple[Variant, ...] = ()
    width_from: str | None = None
    ratios: tuple[Ratio, ...] = ()
    # text encoder component -> the base-name prefix ComfyUI maps for it where it maps no kohya name (Wan's UMT5)
    te_comfy: dict[str, str] = field(default_factory=dict)
    # LLM text encoders ComfyUI loads for this family, told apart by width; `encoder` is the one a file uses
    llm_encoders: tuple[llm.LlmEncoder, ...] = ()
    encoder: llm.LlmEncoder | None = None
    # diffusers pipeline components besides diffusers_prefix that hold some of the denoiser's modules
    components: tuple[str, ...] = ()
    # module-name prefixes kept in ComfyUI form that have no diffusers name map here (reported, never guessed)
    comfy_only: tuple[str, ...] = ()
    index: RuleIndex = field(init=False)

    def __post_init__(self):
        self.index = RuleIndex(self.rules) if self.rules else PassThroughIndex()

    def match(self, name: str, flat: bool) -> Match | None:
        return self.index.match(name, flat)

    @property
    def passthrough(self) -> bool:
        return not self.rules

    def with_encoder(self, encoder: llm.LlmEncoder | None) -> "Family":
        """This family with the LLM text encoder a file was found to use (a shallow copy: the index is shared)."""
        if encoder is self.encoder:
            return self
        out = copy.copy(self)
        out.encoder = encoder
        return out


TE_SD15 = {"te1": ("lora_te_", "text_encoder")}
TE_SDXL = {"te1": ("lora_te1_", "text_encoder"), "te2": ("lora_te2_", "text_encoder_2")}
TE_SD3 = {"te1": ("lora_te1_", "text_encoder"), "te2": ("lora_te2_", "text_encoder_2"), "te3": ("lora_te3_", "text_encoder_3")}
TE_FLUX = {"te1": ("lora_te1_", "text_encoder"), "te2": ("lora_te2_", "text_encoder_2")}


def _sized(module, **kwargs) -> dict:
    """A family file's size evidence as Family keyword arguments."""
    return dict(sizes=module.SIZES, width_from=module.WIDTH_FROM, ratios=getattr(module, "RATIOS", ()), **kwargs)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("flux", flux.RULES, text_encoders=TE_FLUX, slice_prefix="transformer.", **_sized(flux)),
    Family("chroma", chroma.RULES, text_encoders=TE_FLUX, slice_prefix="transformer.", **_sized(chroma)),
    Family("sd3", sd3.RULES, text_encoders=TE_SD3, slice_prefix="transformer.", **_sized(sd3)),
    Family("sana", sana.RULES, **_sized(sana)),
    Family("wan", wan.RULES, te_comfy={"te1": "text_encoders.umt5xxl.transformer."}, **_sized(wan)),
    # kohya keeps diffusers block names for SD1/2, and ComfyUI maps them: the ComfyUI side is diffusers-named.
    Family("sd15", sd_unet.rules_for(sd_unet.SD15), comfy_side="diffusers", diffusers_prefix="unet", text_encoders=TE_SD15),
    Family("sdxl", sd_unet.rules_for(sd_unet.SDXL), diffusers_prefix="unet", text_encoders=TE_SDXL),
    Family("hunyuan_video", hunyuan_video.RULES, **_sized(hunyuan_video)),
    Family("qwen_image", qwen_image.RULES, llm_encoders=(llm.QWEN25_VL_7B,), **_sized(qwen_image)),
    Family("lumina2", lumina2.RULES, llm_encoders=(llm.GEMMA2_2B,), **_sized(lumina2)),
    Family("z_image", z_image.RULES, slice_prefix="transformer.", llm_encoders=(llm.QWEN3_4B,), **_sized(z_image)),
    Family("flux2", flux2.RULES, slice_prefix="transformer.",
           llm_encoders=(llm.MISTRAL3_24B, llm.QWEN3_4B_KLEIN, llm.QWEN3_8B), **_sized(flux2)),
    Family("krea2", krea2.RULES, llm_encoders=(llm.QWEN3_VL_4B,), **_sized(krea2)),
    Family("hidream", hidream.RULES, text_encoders=TE_SD3, llm_encoders=(llm.LLAMA31_8B,), **_sized(hidream)),
    Family("kandinsky5", kandinsky5.RULES, llm_encoders=(llm.QWEN25_VL_7B,), **_sized(kandinsky5)),
    Family("hunyuan_image21", hunyuan_image21.RULES, llm_encoders=(llm.QWEN25_VL_7B,), **_sized(hunyuan_image21)),
    Family("hunyuan_video15", hunyuan_video15.RULES, llm_encoders=(llm.QWEN25_VL_7B,), **_sized(hunyuan_video15)),
    Family("ltx2", ltx2.RULES, llm_encoders=(llm.GEMMA3_12B,), comfy_only=ltx2.COMFY_ONLY, **_sized(ltx2)),
    Family("ltxv", ltxv.RULES, **_sized(ltxv)),
    Family("anima", anima.RULES, llm_encoders=(llm.QWEN3_06B,), components=anima.COMPONENTS, **_sized(anima)),
)}

# A model ComfyUI loads but we have no map for: PEFT/kohya keys on its own module names pass through.
GENERIC = Family("generic", [], diffusers_supported=False)

TEXT_ENCODER_INDEX = RuleIndex(text_encoders.RULES)

ALIASES = {"sd1": "sd15", "sd1.5": "sd15", "sd15": "sd15", "sdxl": "sdxl", "sd3": "sd3", "sd3.5": "sd3", "flux": "flux",
           "flux1": "flux", "flux.1": "flux", "chroma": "chroma", "sana": "sana", "sana_600m": "sana",
           "sana_1600m": "sana", "wan": "wan", "wan2.1": "wan", "wan2.2": "wan", "wan21": "wan", "wan22": "wan",
           "hunyuan_video": "hunyuan_video", "hunyuanvideo": "hunyuan_video", "hunyuan": "hunyuan_video",
           "qwen_image": "qwen_image", "qwen": "qwen_image", "qwenimage": "qwen_image", "lumina2": "lumina2",
           "lumina_2": "lumina2", "lumina": "lumina2", "z_image": "z_image", "zimage": "z_image", "generic": "generic",
           "flux2": "flux2", "flux.2": "flux2", "flux2_dev": "flux2", "flux2_klein": "flux2", "klein": "flux2",
           "krea2": "krea2", "krea_2": "krea2", "hidream": "hidream", "hidream_i1": "hidream",
           "kandinsky5": "kandinsky5", "kandinsky_5": "kandinsky5", "kandinsky5image": "kandinsky5",
           "hunyuan_image21": "hunyuan_image21", "hunyuanimage21": "hunyuan_image21", "hunyuan_image": "hunyuan_image21",
           "hunyuanimage": "hunyuan_image21", "hunyuan_video15": "hunyuan_video15", "hunyuanvideo15": "hunyuan_video15",
           "ltx2": "ltx2", "ltx_2": "ltx2", "ltxav": "ltx2", "ltxv": "ltxv", "ltx_video": "ltxv", "anima": "anima"}

ARCH_CHOICES = sorted(FAMILIES) + ["generic"]


def family_key(name: str) -> str | None:
    """The family an --arch value or a ComfyUI model's family name denotes (None: none we know)."""
    return ALIASES.get(name.lower().replace("-", "_").replace(" ", ""))


def get_family(name: str) -> Family:
    from ...lora_core.errors import LoraFormatError

    key = family_key(name)
    if key is None:
        raise LoraFormatError(f"unknown --arch {name!r}; choose one of {ARCH_CHOICES}")
    return GENERIC if key == "generic" else FAMILIES[key]
