"""Decode any image file to float RGB in [0, 1] and fit it to a training size (a bucket placement).

Pixels stay float32 from decode to crop, so 16-bit sources keep their precision through the resize.
Datasets read only each file's size up front (`image_size`); pixels are decoded when they are encoded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .buckets import Placement, place

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

# Full-scale value of each integer mode we read as grey: 16-bit PNGs open as "I;16*" (or "I" from TIFF).
_GREY_FULL_SCALE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the upright image, from the header alone (EXIF rotation applied, nothing decoded).

    Raises whatever PIL raises for files that are not images; truncated files pass here and fail at decode.
    """
    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a malformed EXIF block: decode_rgb's exif_transpose ignores it the same way
            orientation = 1
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


def decode_rgb(path: str | Path) -> np.ndarray:
    """Read `path` as an (H, W, 3) float32 array in [0, 1], upright (EXIF orientation applied).

    Transparency is composited onto white; grey, palette, CMYK, 16-bit and float images become RGB.
    Raises whatever PIL raises for unreadable or truncated files (the caller names the file).
    """
    with Image.open(path) as image:
        image.load()  # decode now: truncated files fail here, not later
        image = ImageOps.exif_transpose(image)
        return pil_to_float_rgb(image)


def pil_to_float_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) float32 in [0, 1]; alpha composited onto white, 16-bit kept exact."""
    mode = image.mode
    if mode in _GREY_FULL_SCALE:
        grey = np.asarray(image).astype(np.float32) / _GREY_FULL_SCALE[mode]
        return _grey_to_rgb(np.clip(grey, 0.0, 1.0))
    if mode == "F":
        return _grey_to_rgb(_float_grey_to_unit(np.asarray(image, dtype=np.float32)))
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        return rgb * alpha + (1.0 - alpha)  # composite onto white
    if mode != "RGB":
        image = image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(image, dtype=np.float32) / 255.0


def has_alpha(image: Image.Image) -> bool:
    """Whether pil_to_float_rgb composites this image onto white (it carries transparency)."""
    return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def alpha_channel(image: Image.Image) -> np.ndarray:
    """(H, W) float32 opacity in [0, 1] (1 where the image has no transparency), as pil_to_float_rgb reads it."""
    if not has_alpha(image):
        return np.ones((image.height, image.width), dtype=np.float32)
    return np.asarray(image.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0


def grey(image: Image.Image) -> np.ndarray:
    """(H, W) float32 brightness in [0, 1]: 16-bit and float grey kept exact, other modes through PIL's L."""
    if image.mode in _GREY_FULL_SCALE:
        return np.clip(np.asarray(image).astype(np.float32) / _GREY_FULL_SCALE[image.mode], 0.0, 1.0)
    if image.mode == "F":
        return _float_grey_to_unit(np.asarray(image, dtype=np.float32))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _float_grey_to_unit(grey: np.ndarray) -> np.ndarray:
    """Float images carry no declared range: take [0,1] if it fits, else 8-bit, else 16-bit full scale."""
    finite = grey[np.isfinite(grey)]
    peak = float(finite.max()) if finite.size else 0.0
    scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
    return np.clip(np.nan_to_num(grey / scale, nan=0.0), 0.0, 1.0)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


def resize_and_crop(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale so the image covers `size` = (w, h) (shorter side to target), then center-crop to it."""
    height, width = rgb.shape[:2]
    return fit_to_placement(rgb, place((width, height), size))


def fit_to_placement(rgb: np.ndarray, placement: Placement) -> np.ndarray:
    """Resize (H, W, C) float pixels to placement.resized and cut the bucket window at placement.crop.

    Lanczos when shrinking (sharp, alias-free); bicubic when enlarging (Lanczos rings more on upscale).
    """
    height, width = rgb.shape[:2]
    if (width, height) != placement.source:
        raise ValueError(f"pixels are {width}x{height} but the placement was made for "
                         f"{placement.source[0]}x{placement.source[1]}")
    new_w, new_h = placement.resized
    if (new_w, new_h) != (width, height):
        resample = Image.Resampling.LANCZOS if placement.scale < 1.0 else Image.Resampling.BICUBIC
        rgb = np.stack(
            [np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c])).resize((new_w, new_h), resample))
             for c in range(rgb.shape[2])],
            axis=2,
        )
    (left, top), (target_w, target_h) = placement.crop, placement.bucket
    cropped = rgb[top:top + target_h, left:left + target_w]
    return np.clip(cropped, 0.0, 1.0).astype(np.float32)  # both filters overshoot slightly at edges


def load_training_pixels(path: str | Path, size: tuple[int, int] | Placement) -> torch.Tensor:
    """(H, W, 3) float32 tensor in [0, 1] at `size` = (w, h) or a placement: ComfyUI IMAGE layout, no batch dim."""
    rgb = decode_rgb(path)
    if not isinstance(size, Placement):
        return torch.from_numpy(np.ascontiguousarray(resize_and_crop(rgb, size)))
    return torch.from_numpy(np.ascontiguousarray(fit_to_placement(rgb, size)))
