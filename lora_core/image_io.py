"""Decode any image file to float RGB in [0, 1] and fit it to a training resolution.

Pixels stay float32 from decode to crop, so 16-bit sources keep their precision through the resize.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

# Full-scale value of each integer mode we read as grey: 16-bit PNGs open as "I;16*" (or "I" from TIFF).
_GREY_FULL_SCALE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


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


def _float_grey_to_unit(grey: np.ndarray) -> np.ndarray:
    """Float images carry no declared range: take [0,1] if it fits, else 8-bit, else 16-bit full scale."""
    finite = grey[np.isfinite(grey)]
    peak = float(finite.max()) if finite.size else 0.0
    scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
    return np.clip(np.nan_to_num(grey / scale, nan=0.0), 0.0, 1.0)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


def resize_and_crop(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale so the image covers `size` = (w, h) (shorter side to target), then center-crop to it.

    Lanczos when shrinking (sharp, alias-free); bicubic when enlarging (Lanczos rings more on upscale).
    """
    target_w, target_h = size
    height, width = rgb.shape[:2]
    scale = max(target_w / width, target_h / height)
    new_w = max(target_w, round(width * scale))
    new_h = max(target_h, round(height * scale))
    if (new_w, new_h) != (width, height):
        resample = Image.Resampling.LANCZOS if scale < 1.0 else Image.Resampling.BICUBIC
        rgb = np.stack(
            [np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c])).resize((new_w, new_h), resample))
             for c in range(3)],
            axis=2,
        )
    left = (new_w - target_w) // 2
    top = (new_h - target_h) // 2
    cropped = rgb[top:top + target_h, left:left + target_w]
    return np.clip(cropped, 0.0, 1.0).astype(np.float32)  # both filters overshoot slightly at edges


def load_training_pixels(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) float32 tensor in [0, 1] at `size` = (w, h): ComfyUI IMAGE layout without the batch dim."""
    return torch.from_numpy(np.ascontiguousarray(resize_and_crop(decode_rgb(path), size)))
