"""Aspect-ratio buckets: the set of training sizes, and where each image goes in one.

The set follows kohya's rule: for a base resolution, every (w, h) with both sides multiples of `step` in
[min_side, max_side], the largest h for each w with w * h <= resolution² pixels, both orientations, plus the
square. Every bucket thus holds about as many pixels as the base square, so batches cost the same.

A min_side above the base square's side is lowered to it, so small resolutions work with the defaults.
An image goes to the bucket whose aspect ratio is nearest in log scale: that is the bucket that needs the
smallest crop (the cut fraction is 1 - min(a/b, b/a) for aspects a and b). It is then resized so that it
covers the bucket with one side exactly and cropped along the other side only (center, unless jittered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DatasetError

Size = tuple[int, int]  # (width, height) in pixels


@dataclass(frozen=True)
class BucketConfig:
    """Options of the bucket set. resolution may be one side (square base) or a (w, h) base."""

    resolution: int | Size
    min_side: int = 256
    max_side: int = 2048
    step: int = 64

    @property
    def area(self) -> int:
        w, h = _pair(self.resolution)
        return w * h


@dataclass(frozen=True)
class Placement:
    """How one image fits its bucket: resize `source` to `resized`, then keep the bucket-sized window at `crop`.

    This is also what SDXL's size conditioning reads: original size = source, crop top-left = crop
    (in resized pixels, as kohya and SDXL's training code record it), target size = bucket.
    """

    source: Size
    bucket: Size
    resized: Size
    crop: Size  # (left, top) of the window in the resized image

    @property
    def scale(self) -> float:
        return max(self.bucket[0] / self.source[0], self.bucket[1] / self.source[1])

    @property
    def upscaled(self) -> bool:
        return self.scale > 1.0

    @property
    def cut(self) -> Size:
        """Pixels removed along each axis of the resized image (at most one axis is non-zero, +1 px rounding)."""
        return self.resized[0] - self.bucket[0], self.resized[1] - self.bucket[1]

    @property
    def kept_fraction(self) -> float:
        """Share of the (resized) image inside the window: 1.0 means nothing was cropped."""
        return (self.bucket[0] * self.bucket[1]) / (self.resized[0] * self.resized[1])


def bucket_sizes(config: BucketConfig) -> list[Size]:
    """All bucket sizes of `config`, sorted by aspect ratio (widest last)."""
    step, lo, hi = config.step, config.min_side, config.max_side
    if step <= 0 or step % 8:
        raise DatasetError(f"Bucket step {step} must be a positive multiple of 8 (latents are 1/8 of the image)")
    if lo <= 0 or lo % step or hi % step:
        raise DatasetError(f"Bucket sides min {lo} and max {hi} must be positive multiples of the step {step}")
    if lo > hi:
        raise DatasetError(f"Smallest bucket side {lo} is larger than the largest {hi}")
    area = config.area
    square = int(math.isqrt(area) // step * step)
    if square < step:
        raise DatasetError(f"The resolution {_fmt(_pair(config.resolution))} is smaller than one bucket step ({step} px); "
                           f"raise it or lower the bucket step")
    lo = min(lo, square)  # a base resolution below min_side (small test runs): its square is the smallest bucket
    sizes = {(min(square, hi), min(square, hi))}
    for w in range(lo, hi + 1, step):
        h = min(hi, area // w // step * step)
        if h >= lo:
            sizes.add((w, h))
            sizes.add((h, w))
    return sorted(sizes, key=lambda s: (s[0] / s[1], s[0]))


def fixed_size(resolution: int | Size) -> list[Size]:
    """The one-bucket 'set' used with aspect buckets off: every image resized (shorter side) and center-cropped."""
    return [_pair(resolution)]


def nearest_bucket(source: Size, sizes: list[Size]) -> Size:
    """The bucket whose aspect is nearest to `source`'s in log scale (= smallest crop); ties: larger, then wider."""
    if not sizes:
        raise DatasetError("No bucket sizes to choose from")
    aspect = math.log(source[0] / source[1])
    return min(sizes, key=lambda b: (round(abs(math.log(b[0] / b[1]) - aspect), 12), -b[0] * b[1], -b[0]))


def place(source: Size, bucket: Size, jitter: tuple[float, float] = (0.5, 0.5)) -> Placement:
    """Resize `source` to just cover `bucket`, and place the window; jitter (0..1, 0..1) = (0.5, 0.5) centers it.

    The resized size is rounded, but never below the bucket, so the window always fits.
    """
    w, h = source
    if w <= 0 or h <= 0:
        raise DatasetError(f"Image size {w}x{h} is empty")
    scale = max(bucket[0] / w, bucket[1] / h)
    resized = (max(bucket[0], round(w * scale)), max(bucket[1], round(h * scale)))
    crop = tuple(math.floor((r - b) * min(max(j, 0.0), 1.0)) for r, b, j in zip(resized, bucket, jitter))
    return Placement(source=(w, h), bucket=bucket, resized=resized, crop=crop)  # type: ignore[arg-type]


def assign(source: Size, sizes: list[Size]) -> Placement:
    """The centered placement of an image of size `source` in its nearest bucket."""
    return place(source, nearest_bucket(source, sizes))


def _pair(resolution: int | Size) -> Size:
    if isinstance(resolution, (tuple, list)):
        return int(resolution[0]), int(resolution[1])
    return int(resolution), int(resolution)


def _fmt(size: Size) -> str:
    return f"{size[0]}x{size[1]}"
