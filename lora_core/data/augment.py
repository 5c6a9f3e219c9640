"""Image augmentation: horizontal flip, crop jitter and colour jitter, all seeded, all cached.

Nothing here bypasses the latent cache. Flip: both orientations of every image are encoded and cached, and
each step picks one with the flip probability. Crop and colour jitter: each image gets `variants` fixed
variants, each with its own crop window (a zoom of up to 1 + crop_jitter, the window anywhere in it) and
colour change; they are encoded and cached once like the plain image, and each step picks one variant.
Variant parameters come from (seed, the image's content hash, variant number), so they and their cache
keys are the same in every run. More variants = more variety and more encoding time and cache space.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from .buckets import Placement, Size
from ..errors import DatasetError


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.0  # probability that a step trains on the mirrored image
    crop_jitter: float = 0.0  # variants zoom in by up to this fraction and move the window anywhere in it
    brightness: float = 0.0  # factor drawn in [1 - b, 1 + b]
    contrast: float = 0.0  # factor drawn in [1 - c, 1 + c]
    saturation: float = 0.0  # factor drawn in [1 - s, 1 + s]
    hue: float = 0.0  # shift drawn in [-h, h] turns of the colour wheel (0.5 = half a turn)
    variants: int = 1  # cached variants per image when crop or colour jitter is on
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {"flip": (0.0, 1.0), "crop_jitter": (0.0, 1.0), "brightness": (0.0, 1.0), "contrast": (0.0, 1.0),
                  "saturation": (0.0, 1.0), "hue": (0.0, 0.5)}
        for name, (lo, hi) in checks.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise DatasetError(f"augmentation {name} must be between {lo} and {hi}, got {value}")
        if self.variants < 1:
            raise DatasetError(f"augmentation variants must be >= 1, got {self.variants}")

    @property
    def jitters(self) -> bool:
        return self.crop_jitter > 0 or self.colour_jitters

    @property
    def colour_jitters(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.saturation > 0 or self.hue > 0

    @property
    def variant_count(self) -> int:
        return self.variants if self.jitters else 1


@dataclass(frozen=True)
class Variant:
    """One cached version of an image: where its window sits and how its colours change."""

    index: int = 0
    zoom: float = 1.0
    window: tuple[float, float] = (0.5, 0.5)  # position of the window in the slack, 0..1 per axis
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0

    @property
    def identity(self) -> bool:
        return self == Variant(index=self.index)

    def key(self) -> list[float]:
        """What the latent depends on (the index does not matter, only the numbers)."""
        return [round(v, 9) for v in (self.zoom, *self.window, self.brightness, self.contrast, self.saturation, self.hue)]


def variants_for(config: AugmentConfig, content_digest: str) -> list[Variant]:
    """The image's variants; variant 0 is the plain centered image unless jitter is on."""
    if not config.jitters:
        return [Variant()]
    out = []
    for k in range(config.variants):
        seed = int.from_bytes(hashlib.blake2b(f"{config.seed}:{content_digest}:{k}".encode(), digest_size=8).digest(), "little")
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(7, generator=g, dtype=torch.float64).tolist()
        spread = lambda amount, x: 1.0 + amount * (2 * x - 1)  # noqa: E731
        out.append(Variant(
            index=k,
            zoom=1.0 + config.crop_jitter * u[0],
            window=(u[1], u[2]) if config.crop_jitter > 0 else (0.5, 0.5),
            brightness=spread(config.brightness, u[3]),
            contrast=spread(config.contrast, u[4]),
            saturation=spread(config.saturation, u[5]),
            hue=config.hue * (2 * u[6] - 1),
        ))
    return out


def jittered(placement: Placement, variant: Variant) -> Placement:
    """The placement zoomed by variant.zoom, with the window at variant.window inside the slack."""
    if variant.zoom == 1.0 and variant.window == (0.5, 0.5):
        return placement
    bucket = placement.bucket
    scale = placement.scale * variant.zoom
    resized: Size = (max(bucket[0], round(placement.source[0] * scale)), max(bucket[1], round(placement.source[1] * scale)))
    crop = tuple(math.floor((r - b) * j) for r, b, j in zip(resized, bucket, variant.window))
    return Placement(source=placement.source, bucket=bucket, resized=resized, crop=crop)  # type: ignore[arg-type]


def flipped_crop(placement: Placement) -> Size:
    """The crop's top-left as seen in the mirrored image (what SDXL's size conditioning should get when flipped)."""
    return placement.resized[0] - placement.crop[0] - placement.bucket[0], placement.crop[1]


def apply_colour(rgb: np.ndarray, variant: Variant) -> np.ndarray:
    """Brightness, contrast, saturation, then hue, on (..., 3) float pixels in [0, 1]; result clipped to [0, 1]."""
    if (variant.brightness, variant.contrast, variant.saturation, variant.hue) == (1.0, 1.0, 1.0, 0.0):
        return rgb
    x = rgb.astype(np.float32) * variant.brightness
    grey = _luma(x)
    x = (x - grey.mean()) * variant.contrast + grey.mean()
    grey = _luma(x)
    x = grey + (x - grey) * variant.saturation
    if variant.hue:
        x = _rotate_hue(np.clip(x, 0.0, 1.0), variant.hue)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def flip_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Mirror (..., H, W, 3) pixels left-right."""
    return torch.flip(pixels, dims=(-2,))


def _luma(x: np.ndarray) -> np.ndarray:
    return (x[..., 0:1] * 0.299 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.114).astype(np.float32)


def _rotate_hue(rgb: np.ndarray, turns: float) -> np.ndarray:
    """Shift the hue by `turns` of the colour wheel through HSV (saturation and value kept exactly)."""
    maxc, minc = rgb.max(axis=-1), rgb.min(axis=-1)
    delta = maxc - minc
    safe = np.where(delta > 0, delta, 1.0)
    r, g, b = (rgb[..., i] for i in range(3))
    hue = np.where(maxc == r, ((g - b) / safe) % 6.0, np.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(delta > 0, (hue / 6.0 + turns) % 1.0, 0.0)
    # back to RGB: each channel from the hue's distance to its sector (the standard HSV formula)
    out = np.empty_like(rgb)
    for i, offset in enumerate((5.0, 3.0, 1.0)):
        k = (offset + hue * 6.0) % 6.0
        out[..., i] = maxc - delta * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return out
