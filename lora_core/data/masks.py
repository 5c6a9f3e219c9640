"""Masked loss: a per-image weight on the latent grid, from the image's alpha channel or a mask image beside it.

    folder/a.png, folder/mask/a.png         the mask of a.png (same stem, any image extension; white trains)
    folder/10_x/b.jpg, folder/10_x/mask/b.png

source "alpha" reads the image's transparency, "mask_folder" the mask file, "both" multiplies whichever the
image has. A mask has the image's own size; it is fitted with the image's bucket placement (the same resize,
the same crop, jitter included), mirrored with it, and averaged over each latent cell, so each latent element
gets the fraction of its pixels that are masked in. The trainer's loss multiplies each element's loss by

    weight = floor + (1 - floor) * mask          (floor 0: masked-out latents teach nothing)

Images without a mask weigh 1 everywhere. The grid mask (before the floor) is cached beside the latents under a
key naming the mask's own bytes, placement, flip and grid size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..cache.keys import digest_bytes, make_key
from ..errors import DatasetError
from .buckets import Placement, Size
from .dataset_files import count, names, relative
from .image_io import IMAGE_EXTENSIONS, alpha_channel, fit_to_placement, grey, has_alpha, image_size

MASK_SOURCES = ("off", "alpha", "mask_folder", "both")
MASK_FOLDER = "mask"


@dataclass(frozen=True)
class MaskConfig:
    source: str = "off"
    floor: float = 0.0  # weight of the masked-out area

    def __post_init__(self) -> None:
        if self.source not in MASK_SOURCES:
            raise DatasetError(f"mask must be one of {', '.join(MASK_SOURCES)}, got {self.source!r}")
        if not 0.0 <= self.floor <= 1.0:
            raise DatasetError(f"mask_floor must be between 0 and 1, got {self.floor}")

    @property
    def active(self) -> bool:
        return self.source != "off"

    @property
    def reads_alpha(self) -> bool:
        return self.source in ("alpha", "both")

    @property
    def reads_folder(self) -> bool:
        return self.source in ("mask_folder", "both")


@dataclass(frozen=True)
class MaskRef:
    """Where one image's mask comes from: its alpha channel, a mask file (with that file's content hash), or both."""

    alpha: bool
    file: Path | None = None
    digest: str = ""

    def key(self, image_digest: str) -> list:
        return [image_digest if self.alpha else None, self.digest or None]


def mask_files(folder: Path) -> dict[str, Path]:
    """stem -> mask file in folder/mask/; two files of one stem are an error naming them."""
    masks = folder / MASK_FOLDER
    found: dict[str, Path] = {}
    if not masks.is_dir():
        return found
    for path in sorted(p for p in masks.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        if path.stem in found:
            raise DatasetError(f"Two masks for the images named {path.stem!r}: {found[path.stem].name} and {path.name} "
                               f"in {masks}; keep one")
        found[path.stem] = path
    return found


def find_mask(image: Path, source: Size, config: MaskConfig, files: dict[str, Path]) -> MaskRef | None:
    """The image's mask under `config`, or None. A mask file must open and have the image's upright size
    (`source`); anything else raises DatasetError naming it (training it unmasked would be silently wrong)."""
    alpha = config.reads_alpha and _has_alpha(image)
    path = files.get(image.stem) if config.reads_folder else None
    if path is None:
        return MaskRef(alpha=True) if alpha else None
    try:
        data = path.read_bytes()
        size = image_size(path)
    except Exception as error:  # PIL raises many types for bad files
        raise DatasetError(f"Cannot read mask {path}: {error or type(error).__name__}") from error
    if size != source:
        raise DatasetError(f"Mask {path} is {size[0]}x{size[1]} but its image {image.name} is {source[0]}x{source[1]}: "
                           "a mask must have its image's size")
    return MaskRef(alpha=alpha, file=path, digest=digest_bytes(data))


def _has_alpha(path: Path) -> bool:
    with Image.open(path) as image:
        return has_alpha(image)


def decode_mask(image_path: Path, ref: MaskRef) -> np.ndarray:
    """(H, W) float32 in [0, 1], upright: the image's opacity times the mask file's grey, as `ref` says."""
    try:
        return _decode(image_path, ref)
    except Exception as error:  # PIL raises many types for bad files; name the file
        raise DatasetError(f"Cannot decode the mask of {image_path.name} ({ref.file or 'alpha channel'}): "
                           f"{error or type(error).__name__}") from error


def _decode(image_path: Path, ref: MaskRef) -> np.ndarray:
    mask = None
    if ref.alpha:
        with Image.open(image_path) as image:
            image.load()
            mask = alpha_channel(ImageOps.exif_transpose(image))
    if ref.file is not None:
        with Image.open(ref.file) as image:
            image.load()
            grey_mask = grey(ImageOps.exif_transpose(image))
        mask = grey_mask if mask is None else mask * grey_mask
    assert mask is not None
    return mask.astype(np.float32)


def fitted_mask(mask: np.ndarray, placement: Placement, flipped: bool) -> torch.Tensor:
    """(bucket h, bucket w): the mask through the image's own resize and crop, and mirrored as the image is."""
    fitted = torch.from_numpy(np.ascontiguousarray(fit_to_placement(mask[..., None], placement)[..., 0]))
    return torch.flip(fitted, dims=(-1,)) if flipped else fitted


def latent_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(h, w): the mean of the pixels under each latent cell (exact cells when the bucket divides by the grid)."""
    return F.adaptive_avg_pool2d(mask[None, None].float(), grid)[0, 0]


def loss_weight(mask: torch.Tensor, floor: float) -> torch.Tensor:
    """floor + (1 - floor) * mask: the masked-out area keeps `floor` of its loss."""
    return mask if floor == 0 else floor + (1.0 - floor) * mask


def mask_key(ref: MaskRef, image_digest: str, placement: Placement, flipped: bool, grid: tuple[int, int]) -> str:
    return make_key("mask", ref.key(image_digest), placement, flipped, list(grid))


def attach_masks(images: list, root: Path, config: MaskConfig) -> list[str]:
    """Set each TrainImage's .mask under `config`; returns the warnings (images left without one). Every mask that
    cannot be used is named in one DatasetError."""
    if not config.active:
        return []
    files: dict[Path, dict[str, Path]] = {}
    bad, unmasked = [], []
    for image in images:
        folder = image.path.parent
        try:
            if folder not in files:
                files[folder] = mask_files(folder) if config.reads_folder else {}
            image.mask = find_mask(image.path, image.placement.source, config, files[folder])
        except DatasetError as error:
            bad.append(str(error))
            continue
        if image.mask is None:
            unmasked.append(relative(image.path, root))
    if bad:
        raise DatasetError(f"{count(len(bad), 'mask')} cannot be used: " + "; ".join(bad))
    where = {"alpha": "alpha channel", "mask_folder": f"{MASK_FOLDER}/ file",
             "both": f"alpha channel or {MASK_FOLDER}/ file"}
    if unmasked:
        return [f"{count(len(unmasked), 'image')} without a mask ({where[config.source]}), trained on the whole "
                f"image: {names(unmasked)}"]
    return []
