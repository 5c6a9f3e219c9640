"""The latents of a training sample's control images (its references), encoded through the cache like its own.

A control goes through the sample's augmentation with it: the variant's crop window (zoom and position, as
fractions of the slack, on the control's own placement), its colour change, and the flip. Its key is a
latent key like any other (the control's bytes, placement, flip, variant, VAE), so an image used both as a
target and as a control is encoded once. The latents are kept raw, as the VAE returns them: what ComfyUI's
ReferenceLatent node puts in a conditioning (the model's extra_conds scale them into its latent space).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..cache.encoding_cache import EncodingCache
from ..cache.keys import make_key
from ..errors import DatasetError
from .augment import Variant, apply_colour, flip_pixels, jittered
from .buckets import Placement
from .dataset_files import reason
from .image_io import decode_rgb, fit_to_placement
from .pairs import ControlRef


class ReferenceLatents:
    """Raw reference latents (1, C, h, w) of one item's controls per (variant, flip); each control's pixels are
    decoded once per variant, and only on a cache miss."""

    def __init__(self, controls: tuple[ControlRef, ...], encode_pixels: Callable[[torch.Tensor], torch.Tensor],
                 pixels_id: str, cache: EncodingCache):
        self.controls, self.encode_pixels, self.pixels_id, self.cache = controls, encode_pixels, pixels_id, cache
        self.decoded: dict[tuple, np.ndarray] = {}

    def get(self, variant: Variant, flipped: bool) -> tuple[torch.Tensor, ...]:
        return tuple(self._one(control, jittered(control.placement, variant), variant, flipped)
                     for control in self.controls)

    def _one(self, control: ControlRef, placement: Placement, variant: Variant, flipped: bool) -> torch.Tensor:
        def encode() -> torch.Tensor:
            pixels = torch.from_numpy(self._pixels(control, placement, variant)).unsqueeze(0)
            return self.encode_pixels(flip_pixels(pixels) if flipped else pixels)

        key = make_key("latent", control.digest, None, placement, flipped, variant.key(), self.pixels_id)
        return self.cache.get_or_encode("latents", key, encode)

    def _pixels(self, control: ControlRef, placement: Placement, variant: Variant) -> np.ndarray:
        index = (control.path, placement, tuple(variant.key()))
        if index not in self.decoded:
            try:
                decoded = fit_to_placement(decode_rgb(control.path), placement)
            except Exception as error:  # PIL raises many types for bad files; name the control
                raise DatasetError(f"cannot decode its control {control.path.name}: {reason(error)}") from error
            self.decoded[index] = apply_colour(decoded, variant)
        return self.decoded[index]
