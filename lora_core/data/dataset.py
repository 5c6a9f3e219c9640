"""Training images from a folder: repeat folders, captions and templates, aspect buckets, validation split.

Loading reads each file once to hash it and read its size (and, for PNGs, check it is complete); pixels
are decoded only when an image is encoded (TrainImage.load_pixels), so a dataset of any size costs little
memory. Each image gets a Placement in its bucket (data/buckets.py); with buckets off, the single
bucket is the resolution (resize the shorter side, center crop).
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .augment import AugmentConfig
from .buckets import BucketConfig, Placement, Size, assign, bucket_sizes, fixed_size
from ..cache.keys import digest_bytes
from .caption_transforms import CaptionTransforms, without_separator
from .captions import apply_template, check_template, tag_counts
from .dataset_files import FoundFiles, count, find_files, names, normal_extension, reason, relative
from ..cache.encoding_cache import ensure_writable
from ..errors import DatasetError
from .frame_sampling import FramePlan
from .image_io import IMAGE_EXTENSIONS, image_size, load_training_pixels
from .masks import MASK_FOLDER, MaskConfig, MaskRef, attach_masks
from .pairs import ControlRef, PairConfig, attach_controls, folders_to_skip

ACCEPTED = ", ".join(IMAGE_EXTENSIONS)
SMALL_IMAGE_POLICIES = ("upscale", "skip")
BucketKey = tuple[int, int, int]  # (width, height, frames)


@dataclass
class TrainImage:
    """One training item: a still image, or a clip of a video (frames set)."""

    path: Path
    caption: str
    repeats: int = 1
    placement: Placement | None = None
    digest: str = ""  # content hash of the file (a frame folder: of its frame hashes)
    frames: FramePlan | None = None
    mask: MaskRef | None = None  # where its loss mask comes from (data/masks.py); None: weight 1 everywhere
    controls: tuple[ControlRef, ...] = ()  # its control images, the model's references (data/pairs.py)

    @property
    def folder(self) -> str:
        """Name of the folder holding the item: kohya's subset key for ss_tag_frequency."""
        return self.path.parent.name

    @property
    def frame_count(self) -> int:
        return self.frames.count if self.frames is not None else 1

    @property
    def bucket(self) -> BucketKey:
        assert self.placement is not None
        return (*self.placement.bucket, self.frame_count)

    def load_pixels(self, placement: Placement | None = None) -> torch.Tensor:
        """Decode now: (H, W, 3) for an image, (T, H, W, 3) for a clip; float32 in [0, 1], fitted to the placement."""
        placement = placement or self.placement
        if placement is None:
            raise DatasetError(f"{self.path} has no bucket placement")
        if self.frames is not None:
            from .video_io import load_frames

            return load_frames(self.path, self.frames.indices, placement)
        try:
            return load_training_pixels(self.path, placement)
        except Exception as error:  # PIL raises many types for bad files; name the file
            raise DatasetError(f"Cannot decode image {self.path}: {reason(error)}") from error

    @property
    def pixels(self) -> torch.Tensor:
        """The fitted pixels, decoded on each access (datasets no longer hold them)."""
        return self.load_pixels()


@dataclass
class ImageDataset:
    images: list[TrainImage]  # training items
    resolution: Size  # (w, h) base size; with buckets, the base of the bucket set
    warnings: list[str] = field(default_factory=list)
    root: Path | None = None
    trigger_word: str = ""  # for LoRA metadata (ss_* / modelspec trigger words)
    buckets: BucketConfig | None = None  # None: one fixed size
    validation: list[TrainImage] = field(default_factory=list)  # held out, never trained on
    caption_transforms: CaptionTransforms = field(default_factory=CaptionTransforms)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache_folder: Path | None = None
    kind: str = "images"
    masks: MaskConfig = field(default_factory=MaskConfig)
    pairs: PairConfig | None = None  # None: no control images

    def __len__(self) -> int:
        return len(self.images)

    def expanded(self) -> list[TrainImage]:
        """One epoch: every image `repeats` times, in dataset order (the trainer shuffles)."""
        return [image for image in self.images for _ in range(image.repeats)]

    def all_items(self) -> list[TrainImage]:
        """Training items, then validation items: the order of the captions output."""
        return self.images + self.validation

    def captions(self) -> list[str]:
        """The text to encode for each of all_items() (what a text-encoder node gets from the captions output)."""
        return [without_separator(item.caption, self.caption_transforms.keep_separator) for item in self.all_items()]

    def bucket_groups(self) -> dict[BucketKey, list[TrainImage]]:
        groups: dict[BucketKey, list[TrainImage]] = defaultdict(list)
        for image in self.images:
            groups[image.bucket].append(image)
        return dict(sorted(groups.items()))

    def check_batch_size(self, batch_size: int) -> None:
        """Every batch is drawn from one bucket, so each bucket needs at least batch_size distinct items."""
        small = {key: items for key, items in self.bucket_groups().items() if len(items) < batch_size}
        if not small:
            return
        lines = [f"{_key(key)} holds {count(len(items), self.noun)} ({names([relative(i.path, self.root or i.path.parent) for i in items])})"
                 for key, items in small.items()]
        raise DatasetError(
            f"batch_size {batch_size} is larger than what {'these buckets hold' if len(small) > 1 else 'this bucket holds'}: "
            + "; ".join(lines) + ". Lower batch_size (use grad_accumulation for the same effective batch), add "
            "images of that shape, or widen the buckets (a larger bucket step gives fewer, fuller buckets)")

    @property
    def noun(self) -> str:
        return "clip" if self.kind == "videos" else "image"

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya `ss_tag_frequency`: {folder name: {tag: count}}, each image counted once (not per repeat)."""
        captions_by_folder: dict[str, list[str]] = defaultdict(list)
        for image in self.images:
            captions_by_folder[image.folder].append(image.caption)
        return {folder: tag_counts(captions) for folder, captions in captions_by_folder.items()}

    def summary(self) -> str:
        from .dataset_summary import summary

        return summary(self)


def parse_resolution(resolution: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """int -> square; (w, h) -> itself. Each side must be a positive multiple of 8 (the VAE's factor)."""
    if isinstance(resolution, (tuple, list)):
        if len(resolution) != 2:
            raise DatasetError(f"Resolution {resolution!r} must be one int or a (width, height) pair")
        sides = {"width": resolution[0], "height": resolution[1]}
    else:
        sides = {"resolution": resolution}
    for name, value in sides.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise DatasetError(f"Training {name} {value!r} must be an integer number of pixels")
        if value <= 0 or value % 8:
            nearest = max(64, round(value / 64) * 64)
            raise DatasetError(
                f"Training {name} {value} is not a positive multiple of 8 (latents are 1/8 of the image); "
                f"try {nearest}")
    values = list(sides.values())
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def load_image_folder(
    folder: str | Path,
    resolution: int | tuple[int, int],
    trigger_word: str = "",
    default_caption: str = "",
    caption_extension: str = ".txt",
    *,
    buckets: BucketConfig | None = None,
    caption_template: str = "",
    small_images: str = "upscale",
    validation: float = 0.0,
    caption_transforms: CaptionTransforms | None = None,
    augment: AugmentConfig | None = None,
    cache_folder: str | Path | None = None,
    masks: MaskConfig | None = None,
    pairs: PairConfig | None = None,
) -> ImageDataset:
    """Load every image under `folder` (resolved path); raises DatasetError.

    buckets: aspect-ratio buckets (None = every image resized and center-cropped to `resolution`).
    small_images: "upscale" (with a warning naming them) or "skip" images that must be enlarged to fill
    their bucket. validation: a fraction (< 1) or number (>= 1) of images held out for validation loss.
    Unreadable images are skipped and named in `warnings`; so are images without captions, which get
    `default_caption`. The caption is `caption_template` with {trigger} and {caption} filled in; without a
    template, `trigger_word` is prepended unless the caption already starts with it. masks: where loss masks
    come from (data/masks.py; None: no masks). pairs: where each image's control images come from and how they
    are sized (data/pairs.py; None: no controls).
    """
    size = check_options(resolution, caption_template, small_images)
    sizes = bucket_sizes(buckets) if buckets is not None else fixed_size(size)
    root = Path(folder).expanduser()
    extension = normal_extension(caption_extension)
    masks = masks or MaskConfig()
    skip = ((MASK_FOLDER,) if masks.active else ()) + folders_to_skip(root, pairs)
    found = find_files(root, _is_image, extension, f"{ACCEPTED} images", skip=skip)
    warnings = found.warnings

    images: list[TrainImage] = []
    unreadable, uncaptioned, upscaled, skipped = [], [], [], []
    for entry in found.entries:
        name = relative(entry.path, root)
        try:
            source, digest = probe_image(entry.path)
        except Exception as exc:  # PIL raises many types for bad files: all mean "skip and name it"
            unreadable.append(f"{name} ({reason(exc)})")
            continue
        placement = bucket_placement(name, source, sizes, small_images, upscaled, skipped)
        if placement is None:
            continue
        if not entry.caption:
            uncaptioned.append(name)
        text = apply_template(caption_template, entry.caption or default_caption.strip(), trigger_word)
        images.append(TrainImage(path=entry.path, caption=text, repeats=entry.repeats, placement=placement, digest=digest))

    if not images:
        if skipped and not unreadable:
            raise DatasetError(f"Every image in {root} is smaller than its bucket and small_images is 'skip': "
                               f"{names(skipped)}")
        raise DatasetError(f"None of the {len(unreadable)} images in {root} could be read: {names(unreadable)}")
    if unreadable:
        warnings.append(f"Skipped {count(len(unreadable), 'unreadable image')}: {names(unreadable)}")
    if pairs is not None:
        images, unpaired = attach_controls(images, root, pairs, buckets)
        warnings += unpaired
        kept = {relative(i.path, root) for i in images}
        uncaptioned = [name for name in uncaptioned if name in kept]
    warnings += attach_masks(images, root, masks)
    dataset = finish_dataset(
        images, found, root, size, "image", upscaled=upscaled, skipped=skipped, uncaptioned=uncaptioned,
        trigger_word=trigger_word, default_caption=default_caption, caption_template=caption_template, buckets=buckets,
        validation=validation, caption_transforms=caption_transforms, augment=augment, cache_folder=cache_folder,
        masks=masks)
    dataset.pairs = pairs
    return dataset


def check_options(resolution: int | tuple[int, int], caption_template: str, small_images: str) -> Size:
    """The checks every folder loader starts with; returns the parsed resolution."""
    size = parse_resolution(resolution)
    check_template(caption_template)
    if small_images not in SMALL_IMAGE_POLICIES:
        raise DatasetError(f"small_images must be one of {', '.join(SMALL_IMAGE_POLICIES)}, got {small_images!r}")
    return size


def bucket_placement(name: str, source: Size, sizes: list[Size], small_images: str, upscaled: list[str],
                     skipped: list[str]) -> Placement | None:
    """An item's place in its bucket. One smaller than its bucket is named in `upscaled`, or under small_images
    'skip' in `skipped`, and then gets None (leave it out)."""
    placement = assign(source, sizes)
    if placement.upscaled:
        (skipped if small_images == "skip" else upscaled).append(f"{name} ({source[0]}x{source[1]})")
        if small_images == "skip":
            return None
    return placement


def finish_dataset(
    items: list[TrainImage], found: FoundFiles, root: Path, size: Size, noun: str, *, upscaled: list[str],
    skipped: list[str], uncaptioned: list[str], trigger_word: str, default_caption: str, caption_template: str,
    buckets: BucketConfig | None, validation: float, caption_transforms: CaptionTransforms | None,
    augment: AugmentConfig | None, cache_folder: str | Path | None, kind: str = "images",
    masks: MaskConfig | None = None,
) -> ImageDataset:
    """What every folder loader ends with, after its own warnings in found.warnings: the warnings on small items
    (`noun`s), items without captions and latin-1 captions, the cache folder check, and the validation split."""
    warnings = found.warnings
    report_small(warnings, upscaled, skipped, noun)
    if uncaptioned:
        used = apply_template(caption_template, default_caption.strip(), trigger_word)
        warnings.append(f"{count(len(uncaptioned), noun)} with no caption ({names(uncaptioned)}); "
                        f"using the default caption {used!r}")
    if found.latin1:
        warnings.append(f"{count(len(found.latin1), 'caption')} not valid UTF-8, read as latin-1: {names(found.latin1)}")
    if cache_folder:
        ensure_writable(Path(cache_folder))  # fail here, naming the folder, not after loading the models
    train, held_out = split_validation(items, validation, root)
    return ImageDataset(images=train, resolution=size, warnings=warnings, root=root, trigger_word=trigger_word.strip(),
                        buckets=buckets, validation=held_out, caption_transforms=caption_transforms or CaptionTransforms(),
                        augment=augment or AugmentConfig(), cache_folder=Path(cache_folder) if cache_folder else None,
                        kind=kind, masks=masks or MaskConfig())


def report_small(warnings: list[str], upscaled: list[str], skipped: list[str], noun: str) -> None:
    if upscaled:
        warnings.append(f"{count(len(upscaled), noun)} smaller than {'its' if len(upscaled) == 1 else 'their'} bucket, "
                        f"upscaled (blurrier than the rest; set small_images to 'skip' to leave them out): {names(upscaled)}")
    if skipped:
        warnings.append(f"Skipped {count(len(skipped), noun)} smaller than {'its' if len(skipped) == 1 else 'their'} "
                        f"bucket (small_images 'skip'): {names(skipped)}")


def split_validation(items: list[TrainImage], validation: float, root: Path) -> tuple[list[TrainImage], list[TrainImage]]:
    """Hold out a fraction (< 1) or a number (>= 1) of the files, picked by a fixed seed so every run holds out
    the same ones; all clips of a held-out video go with it (no clip of it is trained on)."""
    if validation < 0:
        raise DatasetError(f"validation must be >= 0 (a fraction below 1, or a number of files), got {validation}")
    if validation == 0:
        return items, []
    files = list(dict.fromkeys(item.path for item in items))
    n = max(1, round(validation * len(files))) if validation < 1 else int(validation)
    if n >= len(files):
        raise DatasetError(f"Holding out {n} of the {len(files)} files in {root} for validation leaves none to train on")
    chosen = {files[i] for i in torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:n].tolist()}
    return [item for item in items if item.path not in chosen], [item for item in items if item.path in chosen]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def probe_image(path: Path) -> tuple[Size, str]:
    """(upright size, content hash) from one read of the file; a truncated PNG fails here (verify checks CRCs)."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    return image_size(io.BytesIO(data)), digest_bytes(data)


def _key(key: BucketKey) -> str:
    w, h, frames = key
    return f"bucket {w}x{h}" + (f"x{frames} frames" if frames > 1 else "")
