"""Image-to-video models for `lora-lab train` (model.image_to_video): each clip conditions the model on its own
first frame, exactly as diffusers' WanImageToVideoPipeline builds that condition for sampling.

  concat  Wan 2.1 I2V and Wan 2.2 I2V A14B (transformer in_channels = 2 z + 4): the transformer's input is the noisy
          latent followed by 4 mask channels (1 on the first latent frame: the first pixel frame's 4 temporal
          slots; 0 after) and the latent of the first frame padded with zeros in [-1, 1] (mid-grey) to the
          clip's length. Wan 2.1 I2V also takes the first frame's CLIP vision states (the penultimate layer of
          image_encoder/, as the pipeline's encode_image), passed as encoder_hidden_states_image.
  latent  Wan 2.2 TI2V-5B (model_index.json's expand_timesteps): the first latent frame is the clean latent of the
          first frame (a causal VAE encodes the first frame alone, so it is the clip's own first latent frame), its
          tokens get timestep 0, and the output keeps it: that frame carries no loss.

"auto" turns the concat kind on (an I2V transformer always has the image channels) and leaves TI2V-5B, which also
generates from text alone, to "first frame".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from ..data.training_samples import SampleInfo
from ..errors import DatasetError, LoraLabError

MODES = ("auto", "first frame", "off")
TEMPORAL_SLOTS = 4  # Wan's VAE packs 4 pixel frames per latent frame; the mask has one channel per slot


def first_frame_kind(root: Path, family: str, config: dict) -> str | None:
    """"concat", "latent" or None for a model folder (its model_index.json and transformer config)."""
    if family != "wan":
        return None
    try:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if index.get("expand_timesteps"):
        return "latent"
    z = int(config.get("out_channels") or config.get("in_channels") or 0)
    return "concat" if int(config.get("in_channels") or 0) == 2 * z + TEMPORAL_SLOTS else None


def resolve_first_frame(mode: str, kind: str | None, what: str) -> str | None:
    """The kind a run uses for model.image_to_video = `mode`; `what` names the model in errors."""
    if mode not in MODES:
        raise LoraLabError(f"model.image_to_video must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off" and kind == "concat":
        raise LoraLabError(f"model.image_to_video = \"off\", but {what} is an image-to-video model: its transformer "
                           "takes the first frame's channels with every latent; use \"auto\"")
    if mode == "first frame" and kind is None:
        raise LoraLabError(f"model.image_to_video = \"first frame\", but {what} is not conditioned on a first frame "
                           "the way lora-lab train knows (Wan 2.1/2.2 I2V, Wan 2.2 TI2V-5B)")
    if mode == "off" or (mode == "auto" and kind != "concat"):
        return None
    return kind


def clip_length(info: SampleInfo) -> int:
    return info.item.frames.count if info.item.frames is not None else 1


def concat_condition(first: torch.Tensor, length: int, encode_pixels: Callable, latent_in: Callable) -> torch.Tensor:
    """(4 + z, T', h, w): the mask channels, then the model-space latent of the first frame (1, H, W, 3) in [0, 1]
    followed by mid-grey frames to `length` pixel frames."""
    video = torch.full((length, *first.shape[1:3], 3), 0.5, dtype=torch.float32)
    video[:1] = first[..., :3]
    image = latent_in(encode_pixels(video))[0].float()
    mask = torch.zeros((TEMPORAL_SLOTS, *image.shape[1:]), dtype=image.dtype)
    mask[:, 0] = 1.0  # the first latent frame is known
    return torch.cat([mask, image])


def clip_vision_encoder(root: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """first frame (1, H, W, 3) in [0, 1] -> the penultimate hidden states (L, D) of image_encoder/, on the
    pixels image_processor/ makes of it (WanImageToVideoPipeline.encode_image)."""
    import transformers

    missing = [p for p in ("image_encoder", "image_processor") if not (root / p).is_dir()]
    if missing:
        raise LoraLabError(f"{root} is a Wan 2.1 image-to-video model (its transformer takes image states) but lacks "
                           f"{', '.join(m + '/' for m in missing)}")
    processor = transformers.CLIPImageProcessor.from_pretrained(root / "image_processor", local_files_only=True)
    model = transformers.CLIPVisionModel.from_pretrained(root / "image_encoder", local_files_only=True)
    model = model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(first: torch.Tensor) -> torch.Tensor:
        # the pipeline hands the processor a PIL image; decoded frames are k/255, so this one is the same image
        image = Image.fromarray((first[0, ..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).numpy())
        pixels = processor(images=image, return_tensors="pt").pixel_values
        return model(pixels.to(device), output_hidden_states=True).hidden_states[-2][0].float().cpu()

    return encode


def with_first_frame(make_cond: Callable[[Any, SampleInfo], dict], kind: str, encode_pixels: Callable,
                     latent_in: Callable, encode_image: Callable | None = None) -> Callable[[Any, SampleInfo], dict]:
    """make_cond that adds the clip's first-frame condition: cond["condition"] (and "image_embeds") for the concat
    kind, cond["known_frames"] for the latent kind."""

    def make(text: Any, info: SampleInfo) -> dict:
        cond = make_cond(text, info)
        if kind == "latent":
            if info.latent.dim() != 4 or info.latent.shape[1] < 2:
                raise DatasetError(f"image_to_video \"first frame\" trains the frames after the first: "
                                   f"{info.item.path.name} gives {clip_length(info)} frame(s), one latent frame; use "
                                   "clips of 5 frames or more")
            cond["known_frames"] = info.latent[:, :1]
            return cond
        if info.first_frame is None:
            raise DatasetError(f"{info.item.path.name}: the dataset gives no first frame")
        first = info.first_frame()
        cond["condition"] = concat_condition(first, clip_length(info), encode_pixels, latent_in)
        if encode_image is not None:
            cond["image_embeds"] = encode_image(first)
        return cond

    return make


def with_known_frames(x: torch.Tensor, conds: list[Any]) -> torch.Tensor:
    """Rows whose cond keeps known frames get them in place of their first latent frames (the model's input and
    its output: the sampler's rule for TI2V-5B)."""
    known = [c.get("known_frames") if isinstance(c, dict) else None for c in conds]
    if all(k is None for k in known):
        return x
    return torch.stack([row if k is None else torch.cat([k.to(row), row[:, k.shape[1]:]], dim=1)
                        for row, k in zip(x, known)])


def token_timesteps(timestep: torch.Tensor, x: torch.Tensor, conds: list[Any], patch: tuple[int, int, int]) -> torch.Tensor:
    """(B,) -> (B, tokens) with 0 on the known frames' tokens (the pipeline's expand_timesteps), or (B,) unchanged."""
    if not any(isinstance(c, dict) and "known_frames" in c for c in conds):
        return timestep
    t, h, w = x.shape[2] // patch[0], x.shape[3] // patch[1], x.shape[4] // patch[2]
    per_frame = timestep[:, None].repeat(1, t)
    for row, cond in enumerate(conds):
        if isinstance(cond, dict) and "known_frames" in cond:
            per_frame[row, :cond["known_frames"].shape[1] // patch[0]] = 0
    return per_frame[:, :, None].expand(-1, t, h * w).reshape(x.shape[0], -1)
