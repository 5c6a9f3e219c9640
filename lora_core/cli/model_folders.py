"""Local diffusers model folders for `lora-lab train`: what a folder holds (JSON only), then loading it per family.

A folder is a diffusers pipeline (unet/ or transformer/, vae/, tokenizer*/ + text_encoder*/), or a bare
UNet/transformer folder whose parent holds the rest. Nothing is ever downloaded (local_files_only).

  family  denoiser class            text encoders (pipeline order)        conditioning
  sd15    UNet2DConditionModel      CLIP-L                                 last hidden state
  sdxl    UNet2DConditionModel      CLIP-L, CLIP-G (projection)            penultimate states concat, pooled G, time ids
  sd3     SD3Transformer2DModel     CLIP-L, CLIP-G, T5                     CLIP states padded to T5 width ++ T5, pooled L++G
  flux    FluxTransformer2DModel    CLIP-L, T5                             T5 states, pooled CLIP-L
  sana    SanaTransformer2DModel    Gemma 2                                last hidden state
  wan     WanTransformer3DModel     UMT5                                   last hidden state, padding zeroed
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .diffusers_backend import DDPMUNetBackend, FlowTransformerBackend
from .edit_models import REFERENCE_PIPELINES, pipeline_class, with_references
from .i2v_models import clip_vision_encoder, first_frame_kind, resolve_first_frame, with_first_frame
from ..families import FAMILIES, cli_families
from ..errors import LoraLabError
from .tiny_models import TinyTextEncoder
from ..data.training_samples import Encoders, SampleInfo


class ModelFolderError(LoraLabError):
    """A model folder that is missing, incomplete, or of another family than asked."""


def _denoisers() -> dict[str, str | None]:
    """diffusers class -> family; None where one class serves several (UNet2DConditionModel: its config decides)."""
    by_class: dict[str, list[str]] = {}
    for name in cli_families():
        by_class.setdefault(FAMILIES[name].diffusers_denoiser, []).append(name)
    return {cls: names[0] if len(names) == 1 else None for cls, names in by_class.items()}


DENOISERS = _denoisers()
# (tokenizer folder, encoder folder, max tokens) per family, in the pipeline's order
TEXT_ENCODERS = {
    "sd15": [("tokenizer", "text_encoder", 77)],
    "sdxl": [("tokenizer", "text_encoder", 77), ("tokenizer_2", "text_encoder_2", 77)],
    "sd3": [("tokenizer", "text_encoder", 77), ("tokenizer_2", "text_encoder_2", 77), ("tokenizer_3", "text_encoder_3", 256)],
    "flux": [("tokenizer", "text_encoder", 77), ("tokenizer_2", "text_encoder_2", 512)],
    "sana": [("tokenizer", "text_encoder", 300)],
    "wan": [("tokenizer", "text_encoder", 512)],
}
FLOW_SHIFT = {"sd3": 3.0, "flux": 3.0, "sana": 3.0, "wan": 5.0}  # used when the folder has no scheduler config
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"{path}: cannot read ({error})") from None


@dataclass
class ModelFolder:
    """What a model folder holds, read from its JSON files only (cheap: used by the pre-flight checks)."""

    root: Path  # the pipeline folder (vae/, text encoders)
    denoiser: Path  # the UNet / transformer folder
    cls: str
    family: str
    config: dict = field(default_factory=dict)

    @property
    def component(self) -> str:
        """The pipeline's attribute holding the denoiser (diffusers LoRA keys start with it)."""
        return "unet" if self.cls == "UNet2DConditionModel" else "transformer"

    def part(self, name: str) -> Path | None:
        path = self.root / name
        return path if path.is_dir() else None


def inspect_folder(path: str | Path) -> ModelFolder:
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFolderError(f"model folder not found: {path}")
    if not path.is_dir():
        raise ModelFolderError(f"model.path must be a diffusers model folder, got a file: {path}")
    denoiser = next((path / n for n in ("transformer", "unet") if (path / n / "config.json").is_file()), None)
    root = path
    if denoiser is None and (path / "config.json").is_file():
        denoiser, root = path, path.parent  # a bare transformer/UNet folder inside a pipeline
    if denoiser is None:
        raise ModelFolderError(f"{path} holds no diffusers model: expected transformer/config.json or "
                               f"unet/config.json (a pipeline folder), or config.json (a transformer/UNet folder)")
    config = _read_json(denoiser / "config.json")
    cls = str(config.get("_class_name", ""))
    if cls not in DENOISERS:
        raise ModelFolderError(f"{denoiser}: a {cls or 'model without _class_name'}, not a model lora-lab trains "
                               f"(supported: {', '.join(DENOISERS)})")
    family = DENOISERS[cls] or ("sdxl" if config.get("addition_embed_type") == "text_time" else "sd15")
    return ModelFolder(root=root, denoiser=denoiser, cls=cls, family=family, config=config)


def check_family(folder: ModelFolder, family: str) -> None:
    if family not in ("auto", folder.family):
        raise ModelFolderError(f"model.family = {family!r}, but {folder.denoiser} holds a {folder.family} model "
                               f"({folder.cls}); set family = \"{folder.family}\" or \"auto\"")


def check_parts(folder: ModelFolder, text_encoder: str) -> None:
    """The VAE and (unless hashed) every text encoder and tokenizer the family needs are there."""
    needed = ["vae"]
    if text_encoder == "pipeline":
        needed += [p for tok, enc, _ in TEXT_ENCODERS[folder.family] for p in (tok, enc)]
    missing = [n for n in needed if folder.part(n) is None]
    if missing:
        raise ModelFolderError(f"{folder.root} lacks {', '.join(m + '/' for m in missing)} for a {folder.family} "
                               f"model (text_encoder = \"hashed\" trains without the text encoders, for tests)")


# --- loading ----------------------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    folder: ModelFolder
    backend: Any  # DDPMUNetBackend | FlowTransformerBackend
    encoders: Encoders
    text_models: list[torch.nn.Module] = field(default_factory=list)

    def release_text_encoders(self) -> None:
        """Free the text encoders once every caption is encoded (not with per-step caption transforms)."""
        self.text_models.clear()
        self.encoders.encode_text = None


def _diffusers_class(name: str):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ModelFolderError(f"this diffusers ({diffusers.__version__}) has no {name}")
    return cls


def load_model(folder: ModelFolder, dtype: str = "fp32", device: torch.device | str = "cpu",
               text_encoder: str = "pipeline", prediction: str = "auto", shift: float = 0.0,
               image_to_video: str = "auto") -> LoadedModel:
    """image_to_video: i2v_models.MODES (Wan I2V / TI2V-5B: each clip's first frame in its cond)."""
    device = torch.device(device)
    first_frame = image_to_video_kind(folder, image_to_video)
    torch_dtype = DTYPES[dtype]
    denoiser = _diffusers_class(folder.cls).from_pretrained(folder.denoiser, torch_dtype=torch_dtype,
                                                           local_files_only=True)
    denoiser = denoiser.to(device).eval().requires_grad_(False)
    scheduler = _read_json(folder.root / "scheduler" / "scheduler_config.json") \
        if (folder.root / "scheduler" / "scheduler_config.json").is_file() else {}
    backend = _backend(folder, denoiser, scheduler, prediction, shift, device)
    backend.compute_dtype = torch_dtype
    vae = _diffusers_class(_read_json(folder.part("vae") / "config.json")["_class_name"]).from_pretrained(
        folder.part("vae"), torch_dtype=torch.float32, local_files_only=True).to(device).eval().requires_grad_(False)
    text_models: list[torch.nn.Module] = []
    encode_text, text_id = _text_encoder(folder, text_encoder, device, torch_dtype, text_models)
    latent_in, make_cond = _latent_in(vae, folder.family), _make_cond(folder)
    if pipeline_class(folder.root) in REFERENCE_PIPELINES:  # an edit model: each sample's references too
        make_cond = with_references(make_cond, latent_in, pipeline_class(folder.root))
    encode_pixels = _vae_encoder(vae, device)
    if first_frame is not None:
        encode_image = clip_vision_encoder(folder.root, device) if folder.config.get("image_dim") else None
        make_cond = with_first_frame(make_cond, first_frame, encode_pixels, latent_in, encode_image)
    encoders = Encoders(encode_pixels=encode_pixels, pixels_id=_identity(folder.part("vae")),
                        encode_text=encode_text, text_id=text_id, latent_in=latent_in, make_cond=make_cond)
    return LoadedModel(folder, backend, encoders, text_models)


def image_to_video_kind(folder: ModelFolder, mode: str) -> str | None:
    """The first-frame conditioning (i2v_models) a run on this folder uses for model.image_to_video = mode."""
    kind = first_frame_kind(folder.root, folder.family, folder.config)
    try:
        return resolve_first_frame(mode, kind, f"{folder.denoiser} ({folder.family}, {pipeline_class(folder.root) or folder.cls})")
    except LoraLabError as error:
        raise ModelFolderError(str(error)) from None


def _backend(folder: ModelFolder, denoiser: torch.nn.Module, scheduler: dict, prediction: str, shift: float,
             device: torch.device):
    if folder.cls == "UNet2DConditionModel":
        if prediction == "auto":
            prediction = "v" if scheduler.get("prediction_type") == "v_prediction" else "eps"
        keys = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")
        return DDPMUNetBackend(denoiser, prediction=prediction, device=device,
                               **{k: scheduler[k] for k in keys if k in scheduler})
    shift = shift or float(scheduler.get("shift", scheduler.get("flow_shift", FLOW_SHIFT[folder.family])))
    return FlowTransformerBackend(denoiser, shift=shift, device=device)


def _identity(path: Path | None) -> str:
    """Names an encoder in cache keys: its folder and config, and its weight files' sizes and times."""
    if path is None:
        return "hashed"
    h = hashlib.sha256(str(path.resolve()).encode())
    for f in sorted(path.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _is_video_vae(vae: torch.nn.Module) -> bool:
    return "temperal_downsample" in vae.config or type(vae).__name__.endswith("Wan")


def _vae_encoder(vae: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    video = _is_video_vae(vae)

    @torch.no_grad()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) in [0, 1] -> (1, C, h, w), or (1, C, T', h, w) for a video VAE (N frames)."""
        x = pixels[..., :3].to(device).float() * 2 - 1
        x = x.permute(3, 0, 1, 2).unsqueeze(0) if video else x.permute(0, 3, 1, 2)
        out = vae.encode(x)
        latent = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latent  # KL VAEs / DC-AE
        return latent.float().cpu()

    return encode


def _latent_in(vae: torch.nn.Module, family: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Raw VAE latent -> the model's latent space, from the VAE's own config (scale / shift or mean / std)."""
    cfg = vae.config
    mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
    scale, shift = float(cfg.get("scaling_factor") or 1.0), float(cfg.get("shift_factor") or 0.0)

    def latent_in(raw: torch.Tensor) -> torch.Tensor:
        if mean is not None and std is not None:
            shape = (1, -1) + (1,) * (raw.dim() - 2)
            raw = (raw - torch.tensor(mean).reshape(shape)) / torch.tensor(std).reshape(shape)
        else:
            raw = (raw - shift) * scale
        if family == "wan" and raw.dim() == 4:  # an image VAE's latent: one frame
            raw = raw.unsqueeze(2)
        return raw

    return latent_in


# --- text -------------------------------------------------------------------------------------------------------

def _text_dims(folder: ModelFolder) -> tuple[int, int]:
    """(hidden width, pooled width) the denoiser expects from the text side."""
    c = folder.config
    if folder.family in ("sd15", "sdxl"):
        pooled = c.get("projection_class_embeddings_input_dim") or 0
        return int(c["cross_attention_dim"]), int(pooled - 6 * (c.get("addition_time_embed_dim") or 0)) if pooled else 0
    if folder.family in ("sd3", "flux"):
        return int(c["joint_attention_dim"]), int(c["pooled_projection_dim"])
    return int(c["caption_channels"] if folder.family == "sana" else c["text_dim"]), 0


def _text_encoder(folder: ModelFolder, mode: str, device: torch.device, dtype: torch.dtype,
                  keep: list[torch.nn.Module]) -> tuple[Callable[[str], dict], str]:
    width, pooled_width = _text_dims(folder)
    if mode == "hashed":
        hashed = TinyTextEncoder(dim=width, length=16, seed=0)

        def encode_hashed(text: str) -> dict:
            states = hashed(text)
            return {"encoder_hidden_states": states, "pooled": torch.tanh(states.mean(0))[:pooled_width].clone()
                    if pooled_width <= width else torch.zeros(pooled_width)}
        return encode_hashed, f"hashed:{width}"
    from transformers import AutoTokenizer

    import transformers

    parts = []
    for tok_name, enc_name, max_len in TEXT_ENCODERS[folder.family]:
        tokenizer = AutoTokenizer.from_pretrained(folder.part(tok_name), local_files_only=True)
        arch = (_read_json(folder.part(enc_name) / "config.json").get("architectures") or [""])[0]
        cls = getattr(transformers, arch, None)
        if cls is None:
            raise ModelFolderError(f"{folder.part(enc_name)}: unknown text encoder architecture {arch!r}")
        model = cls.from_pretrained(folder.part(enc_name), torch_dtype=dtype, local_files_only=True)
        model = model.to(device).eval().requires_grad_(False)
        keep.append(model)
        parts.append((tokenizer, model, min(max_len, int(tokenizer.model_max_length))))
    family = folder.family

    @torch.no_grad()
    def encode(text: str) -> dict:
        outs = [_run_encoder(tok, model, text, n, device) for tok, model, n in parts]
        return _combine(family, outs, width)

    ident = "|".join(_identity(folder.part(p)) for tok, enc, _ in TEXT_ENCODERS[folder.family] for p in (tok, enc))
    return encode, ident


def _run_encoder(tokenizer, model, text: str, max_len: int, device: torch.device) -> dict:
    batch = tokenizer([text], padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    is_clip = type(model).__name__.startswith("CLIP")
    out = model(ids, attention_mask=None if is_clip else mask, output_hidden_states=True)
    pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        pooled = getattr(out, "pooler_output", None)
    return {"last": out.last_hidden_state[0].float().cpu(), "penultimate": out.hidden_states[-2][0].float().cpu(),
            "pooled": None if pooled is None else pooled[0].float().cpu(), "mask": mask[0].cpu()}


def _combine(family: str, outs: list[dict], width: int) -> dict:
    """The pipelines' way of turning encoder outputs into the denoiser's text inputs."""
    if family == "sd15":
        return {"encoder_hidden_states": outs[0]["last"]}
    if family == "sdxl":
        return {"encoder_hidden_states": torch.cat([outs[0]["penultimate"], outs[1]["penultimate"]], dim=-1),
                "pooled": outs[1]["pooled"]}
    if family == "sd3":
        clip = torch.cat([outs[0]["penultimate"], outs[1]["penultimate"]], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
        return {"encoder_hidden_states": torch.cat([clip, outs[2]["last"]], dim=0),
                "pooled": torch.cat([outs[0]["pooled"], outs[1]["pooled"]], dim=-1)}
    if family == "flux":
        return {"encoder_hidden_states": outs[1]["last"], "pooled": outs[0]["pooled"]}
    states = outs[0]["last"]
    if family == "wan":  # WanPipeline zeroes the states past each prompt's length
        states = states * outs[0]["mask"][:, None].to(states)
    return {"encoder_hidden_states": states}


def _make_cond(folder: ModelFolder) -> Callable[[Any, SampleInfo], Any]:
    family = folder.family

    def make_cond(text: dict, info: SampleInfo) -> dict:
        cond = {"encoder_hidden_states": text["encoder_hidden_states"]}
        if family in ("sd3", "flux"):
            cond["pooled_projections"] = text["pooled"]
        if family == "sdxl":  # micro-conditioning from the sample's real sizes: (h, w) original, crop (top, left), target
            (ow, oh), (cl, ct), (tw, th) = info.original_size, info.crop_top_left, info.target_size
            cond["text_embeds"] = text["pooled"]
            cond["time_ids"] = torch.tensor([oh, ow, ct, cl, th, tw], dtype=torch.float32)
        return cond

    return make_cond
