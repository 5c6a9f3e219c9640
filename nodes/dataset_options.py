"""Small option nodes for the dataset loaders: buckets, caption handling, augmentation, loss masks (each optional)."""

from __future__ import annotations

from comfy_api.latest import io

from ..lora_core.data.augment import AugmentConfig
from ..lora_core.data.caption_transforms import CaptionTransforms
from ..lora_core.data.dataset import SMALL_IMAGE_POLICIES
from ..lora_core.data.masks import MASK_FOLDER, MASK_SOURCES, MaskConfig
from .types import AUGMENTATION, BUCKET_OPTIONS, CAPTION_OPTIONS, MASK_OPTIONS

BUCKET_DEFAULTS = {"min_bucket_side": 256, "max_bucket_side": 2048, "bucket_step": 64, "small_images": "upscale"}
CAPTION_DEFAULTS = {"caption_extension": ".txt", "caption_dropout": 0.0, "tag_dropout": 0.0, "shuffle_tags": False,
                    "keep_tokens": 0, "keep_tokens_separator": ""}


class BucketOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabBucketOptions",
            display_name="Bucket Options",
            category="LoRA Lab/dataset",
            description="Aspect-ratio bucket settings for 'Load Training Images' / 'Load Training Videos'.",
            inputs=[
                io.Int.Input("min_bucket_side", default=256, min=64, max=8192, step=8,
                             tooltip="Smallest bucket side in pixels (kohya min_bucket_reso)."),
                io.Int.Input("max_bucket_side", default=2048, min=64, max=8192, step=8,
                             tooltip="Largest bucket side in pixels (kohya max_bucket_reso)."),
                io.Int.Input("bucket_step", default=64, min=8, max=512, step=8,
                             tooltip="Bucket sides are multiples of this (kohya bucket_reso_steps). Larger steps give "
                                     "fewer, fuller buckets."),
                io.Combo.Input("small_images", options=list(SMALL_IMAGE_POLICIES), default="upscale",
                               tooltip="Images that must be enlarged to fill their bucket: upscale them (a warning names "
                                       "them) or skip them."),
            ],
            outputs=[BUCKET_OPTIONS.Output(display_name="bucket_options")],
        )

    @classmethod
    def execute(cls, min_bucket_side, max_bucket_side, bucket_step, small_images) -> io.NodeOutput:
        return io.NodeOutput({"min_bucket_side": min_bucket_side, "max_bucket_side": max_bucket_side,
                              "bucket_step": bucket_step, "small_images": small_images})


class CaptionOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        per_step = " Changes the caption every step, so Train LoRA needs its clip input (not a conditioning list)."
        return io.Schema(
            node_id="LoraLabCaptionOptions",
            display_name="Caption Options",
            category="LoRA Lab/dataset",
            description="Caption files and per-step caption changes (kohya's caption dropout, tag shuffling).",
            inputs=[
                io.String.Input("caption_extension", default=".txt",
                                tooltip="Caption files beside the images: .txt, .caption, ... A folder's "
                                        "default_caption<extension> file captions its images that have none."),
                io.Float.Input("caption_dropout", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Probability that a step trains an image on the empty caption." + per_step),
                io.Float.Input("tag_dropout", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Probability of dropping each comma-separated tag (not the kept ones)." + per_step),
                io.Boolean.Input("shuffle_tags", default=False,
                                 tooltip="Shuffle the comma-separated tags after the kept ones." + per_step),
                io.Int.Input("keep_tokens", default=0, min=0, max=64,
                             tooltip="Leading tags that never move or drop (e.g. 1 keeps the trigger word first)."),
                io.String.Input("keep_tokens_separator", default="",
                                tooltip="kohya's separator (e.g. |||): everything before it stays in place."),
            ],
            outputs=[CAPTION_OPTIONS.Output(display_name="caption_options")],
        )

    @classmethod
    def execute(cls, caption_extension, caption_dropout, tag_dropout, shuffle_tags, keep_tokens,
                keep_tokens_separator) -> io.NodeOutput:
        return io.NodeOutput({"caption_extension": caption_extension, "caption_dropout": caption_dropout,
                              "tag_dropout": tag_dropout, "shuffle_tags": shuffle_tags, "keep_tokens": keep_tokens,
                              "keep_tokens_separator": keep_tokens_separator})


class Augmentation(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabAugmentation",
            display_name="Augmentation",
            category="LoRA Lab/dataset",
            description="Seeded image augmentation. Nothing bypasses the latent cache: flips cache both orientations, "
                        "crop and colour jitter cache `variants` fixed variants per image.",
            inputs=[
                io.Float.Input("flip", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Probability that a step uses the mirrored image (both are encoded and cached). "
                                       "Leave 0 for asymmetric subjects (text, logos, faces with a parting)."),
                io.Float.Input("crop_jitter", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Each variant zooms in by up to this fraction and moves the crop window anywhere "
                                       "inside the image."),
                io.Float.Input("brightness", default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Factor in [1-b, 1+b]."),
                io.Float.Input("contrast", default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Factor in [1-c, 1+c]."),
                io.Float.Input("saturation", default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Factor in [1-s, 1+s]."),
                io.Float.Input("hue", default=0.0, min=0.0, max=0.5, step=0.01,
                               tooltip="Hue shift in [-h, h] turns of the colour wheel."),
                io.Int.Input("variants", default=4, min=1, max=64,
                             tooltip="Cached variants per image when crop or colour jitter is on; each step picks one. "
                                     "Each costs one VAE encode and its cache space."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Picks the variants (they stay the same, and cached, across runs)."),
            ],
            outputs=[AUGMENTATION.Output(display_name="augmentation")],
        )

    @classmethod
    def execute(cls, flip, crop_jitter, brightness, contrast, saturation, hue, variants, seed) -> io.NodeOutput:
        return io.NodeOutput(AugmentConfig(flip=flip, crop_jitter=crop_jitter, brightness=brightness, contrast=contrast,
                                           saturation=saturation, hue=hue, variants=variants, seed=seed))


class MaskOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabMaskOptions",
            display_name="Mask Options",
            category="LoRA Lab/dataset",
            description="Masked loss for 'Load Training Images': each image's loss counts where its mask is white. "
                        f"Masks come from the image's transparency or a same-name image in a '{MASK_FOLDER}' folder "
                        "beside it; they follow the image's bucket crop, flip and jitter and are cached with the "
                        "latents.",
            inputs=[
                io.Combo.Input("mask", options=list(MASK_SOURCES), default="both",
                               tooltip=f"alpha: the image's transparency. mask_folder: {MASK_FOLDER}/<same name>.png "
                                       "(white trains, black is ignored; the image's size). both: whichever the image "
                                       "has, multiplied when it has both. off: no masks. Images without one train "
                                       "whole."),
                io.Float.Input("mask_floor", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Weight of the masked-out area: 0 = it teaches nothing, 0.1 keeps a little "
                                       "background; 1 = no masking."),
            ],
            outputs=[MASK_OPTIONS.Output(display_name="mask_options")],
        )

    @classmethod
    def execute(cls, mask, mask_floor) -> io.NodeOutput:
        return io.NodeOutput(MaskConfig(source=mask, floor=mask_floor))


def caption_transforms(options: dict | None) -> CaptionTransforms:
    o = {**CAPTION_DEFAULTS, **(options or {})}
    return CaptionTransforms(dropout=o["caption_dropout"], tag_dropout=o["tag_dropout"], shuffle=o["shuffle_tags"],
                             keep_tokens=o["keep_tokens"], keep_separator=o["keep_tokens_separator"].strip())
