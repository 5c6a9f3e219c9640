"""A dataset + encoders -> the trainer's samples, batch order and validation samples, through the cache.

Framework-free: the caller passes the encoders (ComfyUI's VAE and CLIP in nodes/training_data.py, tiny
models in tests). Every latent goes through the EncodingCache under a key naming all its inputs; every
caption text likewise. What varies per step:
  - which variant and orientation of an image: the BucketOrder picks a cached sample per draw;
  - the caption text (dropout, shuffling): the sample's cond is a StepCaption, encoded on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Sequence

import torch

from .augment import Variant, apply_colour, flip_pixels, flipped_crop, jittered, variants_for
from .bucket_order import BucketOrder, OrderItem
from .buckets import Placement, Size
from ..cache.keys import make_key
from .caption_transforms import CaptionTransforms, StepCaption, without_separator
from .dataset import ImageDataset, TrainImage
from .dataset_files import count, names, relative
from .masks import decode_mask, fitted_mask, latent_grid, loss_weight, mask_key
from .reference_latents import ReferenceLatents
from ..cache.encoding_cache import EncodingCache
from ..errors import DatasetError
from ..data.samples import TrainSample, usable_in_autograd


@dataclass(frozen=True)
class SampleInfo:
    """What a cond may depend on besides the caption (SDXL's size conditioning reads the sizes)."""

    item: TrainImage
    placement: Placement  # after crop jitter
    flipped: bool
    latent: torch.Tensor  # the training latent (C, h, w) or (C, T, h, w)
    per_step: bool = False  # the cond is for one step's drawn caption (not worth keeping beyond it)
    mask: torch.Tensor | None = None  # loss weight on the latent grid (h, w), floor applied; None: 1 everywhere
    references: tuple[torch.Tensor, ...] = ()  # raw VAE latents of its controls, fitted and augmented with it
    latent_key: str = ""  # the latent's cache key: what an encoding derived from this sample is keyed on
    # the clip's first frame (1, H, W, 3) as the latent was encoded from it (crop, colour, flip), decoded on call
    first_frame: Callable[[], torch.Tensor] | None = field(default=None, compare=False)

    @property
    def original_size(self) -> Size:
        return self.placement.source

    @property
    def crop_top_left(self) -> Size:
        """(left, top) in resized pixels, mirrored when the image is flipped (as kohya records it)."""
        return flipped_crop(self.placement) if self.flipped else self.placement.crop

    @property
    def target_size(self) -> Size:
        return self.placement.bucket


def _plain_cond(conditioning: Any, info: SampleInfo) -> Any:
    return conditioning


@dataclass
class Encoders:
    """How pixels and captions become the trainer's inputs; the ids name the encoders in cache keys."""

    encode_pixels: Callable[[torch.Tensor], torch.Tensor]  # (N, H, W, 3) in [0, 1] -> raw latent with batch dim 1
    pixels_id: str
    encode_text: Callable[[str], Any] | None = None  # caption -> conditioning
    text_id: str = ""
    latent_in: Callable[[torch.Tensor], torch.Tensor] = lambda raw: raw  # raw latent -> the model's latent space
    make_cond: Callable[[Any, SampleInfo], Any] = _plain_cond  # conditioning + sample -> the trainer's cond
    # Text-encoder training: captions are encoded at every draw (with grad, never cached); make_cond then
    # receives the step's caption text and encodes it itself.
    text_each_step: bool = False


@dataclass
class TrainingData:
    samples: list[TrainSample]
    order: BucketOrder
    validation: list[TrainSample]
    warnings: list[str] = field(default_factory=list)
    report: str = ""
    infos: list[SampleInfo] = field(default_factory=list)  # one per sample


def build_training_data(dataset: ImageDataset, encoders: Encoders, cache: EncodingCache, seed: int,
                        batch_size: int = 1, conditionings: Sequence[Any] | None = None) -> TrainingData:
    """Encode (or load from the cache) everything training needs; raises DatasetError for bad input.

    conditionings: one per caption of dataset.captions() (a text-encoder node's list output), instead of
    encode_text; per-step caption transforms need encode_text, since their texts are only known per step.
    """
    items = dataset.all_items()
    transforms = dataset.caption_transforms
    if conditionings is not None:
        if len(conditionings) != len(items):
            raise DatasetError(
                f"The conditioning list has {len(conditionings)} entries but the dataset has {len(items)} captions: "
                "connect the dataset's captions output to the text encoder, which runs once per caption, in order")
        if transforms.active:
            raise DatasetError("Caption dropout, tag dropout and tag shuffling change the caption every step, so they "
                               "need Train LoRA's clip input; turn them off to use a conditioning list")
    elif encoders.encode_text is None and not encoders.text_each_step:
        raise DatasetError("Captions need a text encoder: connect Train LoRA's clip input or a conditioning list")

    dataset.check_batch_size(batch_size)  # before any encoding: names the bucket and its files
    texts = _TextEncodings(encoders, cache)
    warnings: list[str] = []
    builder = _Builder(dataset, encoders, cache, warnings)
    samples, infos, order_items, validation = [], [], [], []
    failed: list[str] = []
    for index, item in enumerate(items):
        is_validation = index >= len(dataset.images)
        base_text = without_separator(item.caption, transforms.keep_separator)
        conditioning = conditionings[index] if conditionings is not None else None
        try:
            encoded = builder.encode(item, validation=is_validation)
        except DatasetError as error:
            failed.append(f"{relative(item.path, dataset.root or item.path.parent)} ({error})")
            continue
        for info in encoded:
            if conditioning is not None:
                cond = encoders.make_cond(conditioning, info)
            elif encoders.text_each_step:
                drawn = transforms.active and not is_validation
                cond = StepCaption(item.caption if drawn else base_text, transforms if drawn else CaptionTransforms(),
                                   partial(encoders.make_cond, info=replace(info, per_step=True)))
            elif transforms.active and not is_validation:
                cond = StepCaption(item.caption, transforms, _drawn(texts, encoders.make_cond, info))
            else:
                cond = encoders.make_cond(texts.get(base_text), info)
            sample = TrainSample(latent=info.latent, cond=cond, caption=base_text, mask=info.mask)
            if is_validation:
                validation.append(sample)
                continue
            infos.append(info)
            samples.append(sample)
        if not is_validation:
            first = len(samples) - len(encoded)
            plain = tuple(first + k for k, info in enumerate(encoded) if not info.flipped)
            mirrored = tuple(first + k for k, info in enumerate(encoded) if info.flipped)
            order_items += [OrderItem(bucket=item.bucket, variants=plain, flipped=mirrored)] * item.repeats
    if failed:
        warnings.append(f"Skipped {count(len(failed), 'file')} that could not be decoded: {names(failed)}")
    if not samples:
        raise DatasetError(f"No training item of {dataset.root} could be encoded: {names(failed)}")
    if failed:
        _check_after_failures(order_items, batch_size, failed)
    warnings += cache.warnings
    order = BucketOrder(order_items, seed=seed, flip=dataset.augment.flip)
    report = (f"{count(len(samples), 'latent')} for {count(len(dataset.images) - len(failed), dataset.noun)}"
              + (f", {count(len(validation), 'validation latent')}" if validation else "") + "; " + cache.summary())
    return TrainingData(samples, order, validation, warnings, report, infos)


class _TextEncodings:
    """Each distinct text encoded once per process (memory), and per encoder on disk for the fixed captions."""

    def __init__(self, encoders: Encoders, cache: EncodingCache):
        self.encoders, self.cache = encoders, cache

    def get(self, text: str, disk: bool = True) -> Any:
        key = make_key("text", text, self.encoders.text_id)
        encode = self.encoders.encode_text
        assert encode is not None
        return self.cache.get_or_encode("text", key, lambda: encode(text), disk=disk)


def _drawn(texts: _TextEncodings, make_cond: Callable[[Any, SampleInfo], Any], info: SampleInfo) -> Callable[[str], Any]:
    """The step caption's encoder: drawn texts are many and each used rarely, so they stay in memory only."""
    step_info = replace(info, per_step=True)

    def encode(text: str) -> Any:
        with torch.no_grad():
            return usable_in_autograd(make_cond(texts.get(text, disk=False), step_info))
    return encode


class _Builder:
    """Latents of one item: every variant, in both orientations when flipping, through the cache."""

    def __init__(self, dataset: ImageDataset, encoders: Encoders, cache: EncodingCache, warnings: list[str]):
        self.dataset, self.encoders, self.cache, self.warnings = dataset, encoders, cache, warnings

    def encode(self, item: TrainImage, validation: bool) -> list[SampleInfo]:
        augment = self.dataset.augment
        variants = [Variant()] if validation else variants_for(augment, item.digest)
        orientations = (False, True) if augment.flip > 0 and not validation else (False,)
        out = []
        decoded_mask: list = []  # the item's mask, decoded once, only on a cache miss
        references = ReferenceLatents(item.controls, self.encoders.encode_pixels, self.encoders.pixels_id, self.cache)
        for variant in variants:
            assert item.placement is not None
            placement = jittered(item.placement, variant)
            pixels: list[torch.Tensor] = []  # decoded once for both orientations, only on a cache miss

            def frames(flipped: bool, placement=placement, variant=variant, pixels=pixels) -> torch.Tensor:
                if not pixels:
                    decoded = item.load_pixels(placement)
                    pixels.append(torch.from_numpy(apply_colour(decoded.numpy(), variant)))
                frames = pixels[0] if item.frames is not None else pixels[0].unsqueeze(0)
                return flip_pixels(frames) if flipped else frames

            for flipped in orientations:
                key = make_key("latent", item.digest, list(item.frames.indices) if item.frames else None,
                               placement, flipped, variant.key(), self.encoders.pixels_id)
                raw = self.cache.get_or_encode("latents", key, lambda f=flipped: self.encoders.encode_pixels(frames(f)))
                latent = self.encoders.latent_in(raw)[0].float()
                mask = self.mask(item, placement, flipped, tuple(latent.shape[-2:]), decoded_mask)
                first = partial(_first_frame, item, placement, variant, flipped)
                out.append(SampleInfo(item=item, placement=placement, flipped=flipped, latent=latent, mask=mask,
                                      references=references.get(variant, flipped), latent_key=key,
                                      first_frame=first))
        return out

    def mask(self, item: TrainImage, placement: Placement, flipped: bool, grid: tuple[int, int],
             decoded: list) -> torch.Tensor | None:
        """The item's loss weight on this latent's grid: its mask fitted like its pixels, through the cache."""
        if item.mask is None:
            return None

        def encode() -> torch.Tensor:
            if not decoded:
                decoded.append(decode_mask(item.path, item.mask))
            return latent_grid(fitted_mask(decoded[0], placement, flipped), grid)

        key = mask_key(item.mask, item.digest, placement, flipped, grid)
        return loss_weight(self.cache.get_or_encode("masks", key, encode).float(), self.dataset.masks.floor)


def _first_frame(item: TrainImage, placement: Placement, variant: Variant, flipped: bool) -> torch.Tensor:
    """(1, H, W, 3): decoded again on each call (a sample keeps no pixels); the whole clip only when a colour
    variant needs its mean, else its first frame alone."""
    colour = (variant.brightness, variant.contrast, variant.saturation, variant.hue)
    if item.frames is not None and colour == (1.0, 1.0, 1.0, 0.0):
        item = replace(item, frames=replace(item.frames, indices=item.frames.indices[:1]))
    decoded = item.load_pixels(placement)
    frames = torch.from_numpy(apply_colour(decoded.numpy(), variant))
    first = frames[:1] if item.frames is not None else frames.unsqueeze(0)
    return flip_pixels(first) if flipped else first


def _check_after_failures(order_items: list[OrderItem], batch_size: int, failed: list[str]) -> None:
    """Undecodable files are found only when encoding: the buckets they leave may be too small now."""
    groups: dict[Any, set] = {}
    for it in order_items:
        groups.setdefault(it.bucket, set()).add(it.variants)
    small = {f"{k[0]}x{k[1]}" + (f"x{k[2]}" if k[2] > 1 else ""): len(v) for k, v in groups.items() if len(v) < batch_size}
    if small:
        raise DatasetError(f"After skipping {names(failed)}, these buckets hold fewer items than batch_size {batch_size}: "
                           f"{small}; lower batch_size or fix the files")
