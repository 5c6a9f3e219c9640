"""Reading training videos: mp4 / webm / mov / mkv / gif files through PyAV, and folders of frame images.

PyAV (`pip install av`) bundles its own FFmpeg, so no system ffmpeg is needed; ComfyUI itself requires it
(its video nodes use it), so inside ComfyUI it is always there. It is imported only when a video is read.
Probing counts packets (no decoding), so loading a dataset stays cheap; frames are decoded when encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .buckets import Placement
from ..errors import DatasetError
from .image_io import IMAGE_EXTENSIONS, decode_rgb, fit_to_placement, image_size

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".gif")


@dataclass(frozen=True)
class VideoInfo:
    size: tuple[int, int]  # (width, height)
    frames: int
    fps: float  # 0.0 when unknown (frame folders)


def _av():
    try:
        import av
    except ImportError as error:
        raise DatasetError("Reading videos needs PyAV: pip install av (ComfyUI installs it with its requirements)") from error
    return av


def frame_files(folder: Path) -> list[Path]:
    """The images of a frame folder, in name order (frame_0001.png, ...)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def probe(path: Path) -> VideoInfo:
    """Size, frame count and fps of a video file or frame folder; raises DatasetError naming the file."""
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise DatasetError(f"Frame folder {path} holds no {', '.join(IMAGE_EXTENSIONS)} images")
        return VideoInfo(size=image_size(files[0]), frames=len(files), fps=0.0)
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path} has no video stream")
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
            rate = stream.average_rate or stream.guessed_rate
            frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    except DatasetError:
        raise
    except Exception as error:  # PyAV raises its own error types (InvalidDataError, ...) for bad files
        raise DatasetError(f"Cannot read video {path}: {_reason(error)}") from error
    if frames <= 0 or size[0] <= 0 or size[1] <= 0:
        raise DatasetError(f"Cannot read video {path}: no decodable frames")
    return VideoInfo(size=size, frames=frames, fps=float(rate) if rate else 0.0)


def load_frames(path: Path, indices: Sequence[int], placement: Placement) -> torch.Tensor:
    """(T, H, W, 3) float32 in [0, 1]: the frames at `indices` (in that order, repeats allowed), fitted to the
    placement. Raises DatasetError naming the file when it cannot be decoded or ends before the last index."""
    if path.is_dir():
        files = frame_files(path)
        if indices and max(indices) >= len(files):
            raise DatasetError(f"Frame folder {path} has {len(files)} frames, fewer than the {max(indices) + 1} planned")
        frames = []
        for i in indices:
            try:
                frames.append(fit_to_placement(decode_rgb(files[i]), placement))
            except Exception as error:  # a bad file, or a frame of another size than the first
                raise DatasetError(f"Cannot use frame {files[i]}: {_reason(error)}") from error
        return torch.from_numpy(np.stack(frames))
    wanted = set(indices)
    last = max(indices)
    fitted: dict[int, np.ndarray] = {}
    av = _av()
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    fitted[i] = _fit_8bit(frame.to_image(), placement)
                if i >= last:
                    break
    except Exception as error:
        raise DatasetError(f"Cannot decode video {path}: {_reason(error)}") from error
    if last not in fitted:
        got = max(fitted) + 1 if fitted else 0
        raise DatasetError(f"Video {path} ended after {got} decodable frames; {last + 1} were planned "
                           "(the file may be truncated)")
    return torch.from_numpy(np.stack([fitted[i] for i in indices]))


def _fit_8bit(image: Image.Image, placement: Placement) -> np.ndarray:
    """Resize and crop an 8-bit frame in PIL (fast; video is 8-bit anyway), then to float [0, 1]."""
    image = image.convert("RGB")
    if image.size != placement.source:
        raise DatasetError(f"a frame is {image.size[0]}x{image.size[1]}, not {placement.source[0]}x{placement.source[1]}")
    if placement.resized != image.size:
        resample = Image.Resampling.LANCZOS if placement.scale < 1.0 else Image.Resampling.BICUBIC
        image = image.resize(placement.resized, resample)
    (left, top), (w, h) = placement.crop, placement.bucket
    return np.asarray(image.crop((left, top, left + w, top + h)), dtype=np.float32) / 255.0


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
