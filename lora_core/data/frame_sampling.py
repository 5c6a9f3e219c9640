"""Which source frames make each training clip: target fps, 4N+1 frame counts, head / uniform / chunk.

Video VAEs of the Wan family (and HunyuanVideo, LTX) compress time by 4 after the first frame, so a clip of
4N+1 frames gives N+1 latent frames and any other count wastes or breaks frames: counts snap down to 4N+1.
Sampling modes, as in musubi-tuner:
  head     one clip: the first `frames` frames;
  uniform  `clips` clips whose starts are spread evenly over the video;
  chunk    consecutive clips of `frames` frames, as many as fit.
With a target fps, the source is first resampled (nearest frame in time), so a clip spans frames / fps seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DatasetError

SAMPLING_MODES = ("head", "uniform", "chunk")


@dataclass(frozen=True)
class FramePlan:
    """One clip: the source frame indices it is made of (in order) and the fps it is trained at."""

    indices: tuple[int, ...]
    fps: float = 0.0

    @property
    def count(self) -> int:
        return len(self.indices)


def snap_frames(count: int) -> int:
    """The largest 4N+1 <= count (1 for a single frame); counts below 1 are an error."""
    if count < 1:
        raise DatasetError(f"A clip needs at least 1 frame, got {count}")
    return (count - 1) // 4 * 4 + 1


def timeline(source_frames: int, source_fps: float, target_fps: float) -> list[int]:
    """Source frame index for each frame at target_fps (every frame when either fps is unknown or 0)."""
    if target_fps <= 0 or source_fps <= 0 or abs(target_fps - source_fps) < 1e-6:
        return list(range(source_frames))
    step = source_fps / target_fps
    indices, j = [], 0
    while (i := int(j * step + 0.5)) < source_frames:
        indices.append(i)
        j += 1
    return indices


def check_sampling(sampling: str, clips: int = 1) -> None:
    """A sampling mode of SAMPLING_MODES; "uniform" spreads `clips` clips over the video, at least one."""
    if sampling not in SAMPLING_MODES:
        raise DatasetError(f"Unknown frame sampling {sampling!r}: use one of {', '.join(SAMPLING_MODES)}")
    if sampling == "uniform" and clips < 1:
        raise DatasetError(f"clips per video must be >= 1, got {clips}")


def plan_clips(source_frames: int, source_fps: float, frames: int, sampling: str = "head",
               target_fps: float = 0.0, clips: int = 1, allow_fewer: bool = True) -> list[FramePlan]:
    """The clips one video of `source_frames` frames gives; [] when it is too short and allow_fewer is False.

    A video shorter than `frames` (after fps resampling) gives one clip of the largest 4N+1 it holds
    when allow_fewer is True.
    """
    check_sampling(sampling, clips)
    want = snap_frames(frames)
    line = timeline(source_frames, source_fps, target_fps)
    fps = target_fps if target_fps > 0 and source_fps > 0 else source_fps
    if not line:
        return []
    if len(line) < want:
        return [FramePlan(tuple(line[: snap_frames(len(line))]), fps)] if allow_fewer else []
    if sampling == "head":
        starts = [0]
    elif sampling == "chunk":
        starts = list(range(0, len(line) - want + 1, want))
    else:
        last = len(line) - want
        starts = sorted({round(k * last / (clips - 1)) for k in range(clips)}) if clips > 1 else [0]
    return [FramePlan(tuple(line[s:s + want]), fps) for s in starts]
