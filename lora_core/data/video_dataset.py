"""Training clips from a folder of videos (mp4, webm, mov, mkv, gif), frame folders and images.

    folder/walk.mp4, walk.txt        a video and its caption
    folder/turn/0001.png ...         a frame folder (one clip; its caption is turn.txt beside it)
    folder/still.png, still.txt      an image: a 1-frame clip (with include_images)
    folder/5_extra/...               kohya repeat folders work as for images (N_name folders are never frame folders)
Each video gives one or more clips (frame_sampling.py), each clip a frame count of 4N+1; buckets are over
(width, height) as for images and over the frame count, so every batch has one shape. Loading probes
each video (size, frame count, fps) without decoding it; frames are decoded when a clip is encoded.
"""

from __future__ import annotations

from pathlib import Path

from .augment import AugmentConfig
from .buckets import BucketConfig, bucket_sizes, fixed_size
from ..cache.keys import digest_bytes, file_digest
from .caption_transforms import CaptionTransforms
from .captions import apply_template
from .dataset import ImageDataset, TrainImage, bucket_placement, check_options, finish_dataset, probe_image
from .dataset_files import REPEAT_FOLDER, count, find_files, names, normal_extension, reason, relative
from ..errors import DatasetError
from .frame_sampling import FramePlan, plan_clips, snap_frames
from .image_io import IMAGE_EXTENSIONS
from .video_io import VIDEO_EXTENSIONS, VideoInfo, frame_files, probe

SHORT_VIDEO_POLICIES = ("fewer_frames", "skip")


def load_video_folder(
    folder: str | Path,
    resolution: int | tuple[int, int],
    frames: int = 33,
    frame_sampling: str = "head",
    target_fps: float = 0.0,
    clips_per_video: int = 1,
    trigger_word: str = "",
    default_caption: str = "",
    caption_extension: str = ".txt",
    *,
    include_images: bool = True,
    buckets: BucketConfig | None = None,
    caption_template: str = "",
    small_images: str = "upscale",
    short_videos: str = "fewer_frames",
    validation: float = 0.0,
    caption_transforms: CaptionTransforms | None = None,
    augment: AugmentConfig | None = None,
    cache_folder: str | Path | None = None,
) -> ImageDataset:
    """Load every video, frame folder (and image) under `folder` as clips; raises DatasetError.

    frames: frames per clip, snapped down to 4N+1. short_videos: a video with fewer frames than that is
    trained on the largest 4N+1 it holds ("fewer_frames") or left out ("skip"); either way a warning
    names it. Other options as in load_image_folder.
    """
    size = check_options(resolution, caption_template, small_images)
    if short_videos not in SHORT_VIDEO_POLICIES:
        raise DatasetError(f"short_videos must be one of {', '.join(SHORT_VIDEO_POLICIES)}, got {short_videos!r}")
    want = snap_frames(frames)
    sizes = bucket_sizes(buckets) if buckets is not None else fixed_size(size)
    root = Path(folder).expanduser()
    what = f"videos ({', '.join(VIDEO_EXTENSIONS)}) or frame folders" + (f" or {', '.join(IMAGE_EXTENSIONS)} images" if include_images else "")
    found = find_files(root, lambda p: _is_item(p, include_images), normal_extension(caption_extension), what, "videos")
    warnings = found.warnings

    clips: list[TrainImage] = []
    unreadable, short, dropped, uncaptioned, upscaled, skipped = [], [], [], [], [], []
    for entry in found.entries:
        name = relative(entry.path, root)
        try:
            info, digest = _probe(entry.path)
        except Exception as exc:  # DatasetError from probe, or PIL's errors for a bad still image
            unreadable.append(f"{name} ({reason(exc)})")
            continue
        placement = bucket_placement(name, info.size, sizes, small_images, upscaled, skipped)
        if placement is None:
            continue
        plans: list[FramePlan | None]
        if entry.path.is_file() and entry.path.suffix.lower() in IMAGE_EXTENSIONS:
            plans = [None]  # a still image: a 1-frame clip, decoded as an image
        else:
            plans = plan_clips(info.frames, info.fps, want, frame_sampling, target_fps, clips_per_video,
                               allow_fewer=short_videos == "fewer_frames")
            usable = plans[0].count if plans else 0
            if usable < want:
                (short if plans else dropped).append(f"{name} ({_frames_available(info, target_fps)})")
            if not plans:
                continue
        if not entry.caption:
            uncaptioned.append(name)
        text = apply_template(caption_template, entry.caption or default_caption.strip(), trigger_word)
        clips += [TrainImage(path=entry.path, caption=text, repeats=entry.repeats, placement=placement, digest=digest,
                             frames=plan) for plan in plans]

    if not clips:
        problems = unreadable + dropped + skipped
        raise DatasetError(f"None of the {count(len(found.entries), 'item')} in {root} gives a training clip: {names(problems)}")
    if unreadable:
        warnings.append(f"Skipped {count(len(unreadable), 'unreadable video')}: {names(unreadable)}")
    if short:
        warnings.append(f"{count(len(short), 'video')} shorter than {want} frames, trained on the largest 4N+1 "
                        f"frames they hold: {names(short)}")
    if dropped:
        warnings.append(f"Skipped {count(len(dropped), 'video')} shorter than {want} frames (short_videos 'skip'): "
                        f"{names(dropped)}")
    return finish_dataset(
        clips, found, root, size, "video", upscaled=upscaled, skipped=skipped, uncaptioned=uncaptioned,
        trigger_word=trigger_word, default_caption=default_caption, caption_template=caption_template, buckets=buckets,
        validation=validation, caption_transforms=caption_transforms, augment=augment, cache_folder=cache_folder,
        kind="videos")

def _is_item(path: Path, include_images: bool) -> bool:
    if path.is_dir():
        return not REPEAT_FOLDER.match(path.name) and bool(frame_files(path))
    suffix = path.suffix.lower()
    return path.is_file() and (suffix in VIDEO_EXTENSIONS or (include_images and suffix in IMAGE_EXTENSIONS))


def _probe(path: Path) -> tuple[VideoInfo, str]:
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        size, digest = probe_image(path)
        return VideoInfo(size=size, frames=1, fps=0.0), digest
    info = probe(path)
    if path.is_dir():
        digest = digest_bytes("".join(f"{f.name}:{file_digest(f)};" for f in frame_files(path)).encode())
    else:
        digest = file_digest(path)
    return info, digest


def _frames_available(info: VideoInfo, target_fps: float) -> str:
    if target_fps > 0 and info.fps > 0 and abs(target_fps - info.fps) > 1e-6:
        return f"{info.frames} frames at {info.fps:g} fps, {int(info.frames * target_fps / info.fps)} at {target_fps:g} fps"
    return f"{info.frames} frames"
