"""Image-to-video training: every clip conditions the model on its own first frame, built exactly as ComfyUI's
nodes build it for sampling, so a LoRA learns what the model is asked at inference.

  concat  Wan 2.1 I2V and Wan 2.2 I2V A14B (WanImageToVideo): the conditioning carries concat_latent_image, the
          VAE latent of the first frame followed by mid-grey frames (the clip's length), and concat_mask, 0 on the
          first latent frame; the model's own extra_conds turns them into its extra input channels.
  latent  Wan 2.2 TI2V-5B (Wan22ImageToVideoLatent): the first latent frame is the clean latent of the first frame
          (a causal VAE encodes the first frame alone, so it is the clip's own first latent frame) and a
          denoise_mask is 0 there: the model gets per-frame timesteps (0 on that frame), and the sampler puts the
          known frame back into the model's input and output (WAN22.scale_latent_inpaint keeps it clean), so
          that frame carries no loss (comfy_backend.with_known_frames).

Which one a model takes is read from ComfyUI's own model class; "auto" turns the concat kind on (an I2V model
always has image channels) and leaves TI2V-5B, which also generates from text alone, to "first frame".
"""

from __future__ import annotations

import torch

from ..lora_core.cache.encoding_cache import EncodingCache
from ..lora_core.cache.keys import make_key
from ..lora_core.data.training_samples import SampleInfo
from ..lora_core.errors import DatasetError, TrainingError
from .comfy_backend import SampleCond, encode_sample_cond

MODES = ("auto", "first frame", "off")
GREY = 0.5  # WanImageToVideo pads the start image with mid-grey frames to the clip's length


def first_frame_kind(model) -> str | None:
    """"concat", "latent" or None (no first-frame conditioning LoRA Lab knows) for a ComfyUI BaseModel."""
    name = type(model).__name__
    if name == "WAN21" and getattr(model, "image_to_video", False):
        channels = model.latent_format.latent_channels
        if model.diffusion_model.patch_embedding.weight.shape[1] == 2 * channels + 4:  # latent + mask + image
            return "concat"
    if name == "WAN22":
        return "latent"
    return None


def resolve_first_frame(mode: str, model) -> str | None:
    """The kind a run uses for the Train LoRA setting `mode` (MODES); raises for "first frame" on other models."""
    if mode not in MODES:
        raise TrainingError(f"image_to_video must be one of {', '.join(MODES)}, got {mode!r}")
    kind = first_frame_kind(model)
    if mode == "off" or (mode == "auto" and kind != "concat"):
        return None
    if kind is None:
        raise TrainingError(f"image_to_video 'first frame': this model ({type(model.model_config).__name__}) is not "
                            "conditioned on a first frame the way LoRA Lab knows (Wan 2.1/2.2 I2V, Wan 2.2 TI2V-5B)")
    return kind


def clip_length(info: SampleInfo) -> int:
    """The clip's pixel frame count (a still image is one frame)."""
    return info.item.frames.count if info.item.frames is not None else 1


class FirstFrameConds:
    """make_cond's first-frame part: (conditioning, sample) -> the SampleCond the sampler would build for it."""

    def __init__(self, kind: str, patcher, vae, cache: EncodingCache, seed: int):
        self.kind, self.patcher, self.vae, self.cache, self.seed = kind, patcher, vae, cache, seed
        self._masks: dict[tuple, torch.Tensor] = {}  # one denoise_mask per latent shape, shared by its samples

    def __call__(self, conditioning: list, info: SampleInfo) -> SampleCond:
        if self.kind == "concat":
            image, mask = self.concat_inputs(info)
            extra = {"concat_latent_image": image, "concat_mask": mask}
            conditioning = [[entry[0], {**entry[1], **extra}] + list(entry[2:]) for entry in conditioning]
            return encode_sample_cond(self.patcher, conditioning, info.latent, self.seed)
        latent = info.latent
        if latent.dim() != 4 or latent.shape[1] < 2:
            raise DatasetError(f"image_to_video 'first frame' trains the frames after the first: "
                               f"{info.item.path.name} gives {clip_length(info)} frame(s), one latent frame; use "
                               "clips of 5 frames or more")
        cond = encode_sample_cond(self.patcher, conditioning, latent, self.seed, denoise_mask=self.denoise_mask(latent))
        cond.known_frames = latent[:, :1]  # what the sampler keeps: the first latent frame, clean
        return cond

    def concat_inputs(self, info: SampleInfo) -> tuple[torch.Tensor, torch.Tensor]:
        """WanImageToVideo's concat_latent_image (raw VAE latent, through the cache) and concat_mask for this clip."""
        if info.first_frame is None:
            raise TrainingError("image_to_video: the dataset gives no first frame for its samples")
        length = clip_length(info)

        def encode() -> torch.Tensor:
            first = info.first_frame()
            video = torch.full((length, *first.shape[1:3], 3), GREY, dtype=torch.float32)
            video[:1] = first[..., :3]
            return self.vae.encode(video).float().cpu()

        image = self.cache.get_or_encode("first_frames", make_key("wan_i2v", info.latent_key, length), encode)
        mask = torch.ones((1, 1, image.shape[2], image.shape[-2], image.shape[-1]), dtype=torch.float32)
        mask[:, :, :1] = 0.0  # one start frame: the first latent frame is known
        return image, mask

    def denoise_mask(self, latent: torch.Tensor) -> torch.Tensor:
        """Wan22ImageToVideoLatent's noise_mask as the sampler hands it to the model (every channel): 0 on the
        first latent frame, 1 after."""
        shape = tuple(latent.shape)
        if shape not in self._masks:
            mask = torch.ones((1, 1, *shape[1:]), dtype=torch.float32)
            mask[:, :, :1] = 0.0
            self._masks[shape] = mask.expand(1, shape[0], *shape[1:])
        return self._masks[shape]

