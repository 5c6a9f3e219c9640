"""Load Training Videos: videos, frame folders and images -> clips for Train LoRA (Wan and other video models)."""

from __future__ import annotations

from comfy_api.latest import io

from ..lora_core.data.frame_sampling import SAMPLING_MODES
from ..lora_core.data.video_dataset import SHORT_VIDEO_POLICIES, load_video_folder
from .comfy_paths import resolve_dataset_folder
from .dataset_inputs import (caption_inputs, common_inputs, dataset_output, dataset_outputs, folder_fingerprint,
                             folder_input, loader_options, validate_paths)


class LoadTrainingVideos(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabVideoDataset",
            display_name="Load Training Videos",
            category="LoRA Lab",
            description="Reads mp4/webm/mov/mkv/gif videos and folders of frames (and images, as 1-frame clips) with "
                        "same-name caption files. Clips have 4N+1 frames (Wan's VAE rule) and are bucketed by size and "
                        "frame count; frames are decoded only when Train LoRA encodes them.",
            inputs=[
                folder_input("videos"),
                io.Int.Input("resolution", default=480, min=64, max=4096, step=8,
                             tooltip="Base resolution: buckets hold about resolution² pixels per frame "
                                     "(480 ~ Wan's 832x480 area is 624)."),
                io.Int.Input("frames", default=33, min=1, max=1025, step=4,
                             tooltip="Frames per clip, snapped down to 4N+1 (1, 5, 9, ..., 33, ..., 81)."),
                io.Combo.Input("frame_sampling", options=list(SAMPLING_MODES), default="head",
                               tooltip="head: one clip from the start. uniform: clips_per_video clips spread evenly. "
                                       "chunk: consecutive clips, as many as fit."),
                io.Float.Input("target_fps", default=16.0, min=0.0, max=240.0, step=0.5,
                               tooltip="Resample videos to this frame rate first (Wan 2.1 trains at 16). 0 = keep each "
                                       "video's own rate. Frame folders keep their frames as they are."),
                io.Int.Input("clips_per_video", default=1, min=1, max=64, tooltip="For frame_sampling 'uniform'."),
                io.Boolean.Input("aspect_buckets", default=True,
                                 tooltip="Bucket clips by aspect ratio (and always by frame count)."),
                io.Boolean.Input("include_images", default=True, tooltip="Train on images in the folder as 1-frame clips."),
                io.Combo.Input("short_videos", options=list(SHORT_VIDEO_POLICIES), default="fewer_frames",
                               tooltip="Videos shorter than `frames`: train on the largest 4N+1 frames they hold, or "
                                       "skip them. A warning names them either way."),
                *caption_inputs(),
                *common_inputs(),
            ],
            outputs=dataset_outputs(),
        )

    @classmethod
    def fingerprint_inputs(cls, folder, **kwargs):
        return folder_fingerprint(folder)

    @classmethod
    def validate_inputs(cls, folder=None, cache_folder=None):  # no **kwargs: ComfyUI keeps checking the rest
        return validate_paths(folder, cache_folder)

    @classmethod
    def execute(cls, folder, resolution, frames, frame_sampling, target_fps, clips_per_video, aspect_buckets,
                include_images, short_videos, trigger_word, caption_template, default_caption, validation=0.0,
                cache_folder="", bucket_options=None, caption_options=None, augmentation=None) -> io.NodeOutput:
        dataset = load_video_folder(
            resolve_dataset_folder(folder), resolution, frames=frames, frame_sampling=frame_sampling,
            target_fps=target_fps, clips_per_video=clips_per_video, trigger_word=trigger_word,
            default_caption=default_caption, include_images=include_images, caption_template=caption_template,
            short_videos=short_videos, validation=validation,
            **loader_options(resolution, aspect_buckets, cache_folder, bucket_options, caption_options, augmentation))
        return dataset_output(dataset, "video dataset")
