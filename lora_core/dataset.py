"""Training images from a folder: kohya-style repeat folders, captions, trigger word, fixed resolution.

Layout read by `load_image_folder`:
    folder/a.png, folder/a.txt          repeats 1
    folder/10_mychar/b.jpg, b.txt       repeats 10 (one level of N_name folders, as kohya)
Everything is decoded up front, so a bad file is reported at load time, not mid-training.
Bucketing later: each TrainImage carries its own pixels, whose size may then differ from `resolution`.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .captions import read_caption, tag_counts, with_trigger
from .errors import DatasetError
from .image_io import IMAGE_EXTENSIONS, load_training_pixels

REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
MAX_NAMES_IN_MESSAGE = 20
ACCEPTED = ", ".join(IMAGE_EXTENSIONS)


@dataclass
class TrainImage:
    path: Path
    pixels: torch.Tensor  # (H, W, 3) float32 in [0, 1]: ComfyUI IMAGE layout without the batch dim
    caption: str
    repeats: int = 1

    @property
    def folder(self) -> str:
        """Name of the folder holding the image: kohya's subset key for ss_tag_frequency."""
        return self.path.parent.name


@dataclass
class ImageDataset:
    images: list[TrainImage]
    resolution: tuple[int, int]  # (w, h) default size; with buckets, images may carry other sizes
    warnings: list[str] = field(default_factory=list)
    root: Path | None = None
    trigger_word: str = ""  # for LoRA metadata (ss_* / modelspec trigger words)

    def __len__(self) -> int:
        return len(self.images)

    def expanded(self) -> list[TrainImage]:
        """One epoch: every image `repeats` times, in dataset order (the trainer shuffles)."""
        return [image for image in self.images for _ in range(image.repeats)]

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya `ss_tag_frequency`: {folder name: {tag: count}}, each image counted once (not per repeat)."""
        captions_by_folder: dict[str, list[str]] = defaultdict(list)
        for image in self.images:
            captions_by_folder[image.folder].append(image.caption)
        return {folder: tag_counts(captions) for folder, captions in captions_by_folder.items()}

    def summary(self) -> str:
        w, h = self.resolution
        where = f" from {self.root}" if self.root else ""
        lines = [f"{_count(len(self.images), 'image')}, {_count(len(self.expanded()), 'sample')} per epoch "
                 f"at {w}x{h}{where}"]
        per_folder: dict[str, list[TrainImage]] = defaultdict(list)
        for image in self.images:
            per_folder[image.folder].append(image)
        for folder, images in per_folder.items():
            lines.append(f"  {folder}: {_count(len(images), 'image')} x {_count(images[0].repeats, 'repeat')}")
        if self.warnings:
            lines.append(f"{_count(len(self.warnings), 'warning')}:")
            lines.extend(f"  - {warning}" for warning in self.warnings)
        return "\n".join(lines)


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
) -> ImageDataset:
    """Load every image under `folder` (resolved path) at `resolution`; raises DatasetError.

    Unreadable images are skipped and named in `warnings`; so are images without captions, which get
    `default_caption`. `trigger_word` is prepended to every caption that does not already start with it.
    """
    size = parse_resolution(resolution)
    root = Path(folder).expanduser()
    if not root.exists():
        raise DatasetError(f"Dataset folder not found: {root} (expected a folder of {ACCEPTED} images)")
    if not root.is_dir():
        raise DatasetError(f"Dataset path is not a folder: {root} (expected a folder of {ACCEPTED} images)")
    if not caption_extension.startswith("."):
        caption_extension = "." + caption_extension

    try:
        found, warnings = _find_images(root)
    except OSError as exc:  # e.g. permission denied on the folder or a repeat folder
        raise DatasetError(f"Cannot list dataset folder {root}: {_reason(exc)}") from exc
    if not found:
        raise DatasetError(
            f"No training images in {root}: expected {ACCEPTED} files, directly inside it or in kohya-style "
            f"repeat folders such as 10_name/, each with an optional {caption_extension} caption of the same name")

    images: list[TrainImage] = []
    unreadable: list[str] = []
    uncaptioned: list[str] = []
    latin1: list[str] = []
    for path, repeats in found:
        name = _relative(path, root)
        try:
            pixels = load_training_pixels(path, size)
        except Exception as exc:  # PIL raises many types for bad files; all mean "skip and name it"
            unreadable.append(f"{name} ({_reason(exc)})")
            continue
        caption = _caption_for(path, caption_extension, root, latin1, warnings)
        if not caption:
            uncaptioned.append(name)
            caption = default_caption.strip()
        images.append(TrainImage(path=path, pixels=pixels, caption=with_trigger(caption, trigger_word),
                                 repeats=repeats))

    if not images:
        raise DatasetError(f"None of the {len(unreadable)} images in {root} could be read: {_names(unreadable)}")
    if unreadable:
        warnings.append(f"Skipped {_count(len(unreadable), 'unreadable image')}: {_names(unreadable)}")
    if uncaptioned:
        used = with_trigger(default_caption.strip(), trigger_word)
        warnings.append(f"{_count(len(uncaptioned), 'image')} with no caption ({_names(uncaptioned)}); "
                        f"using the default caption {used!r}")
    if latin1:
        warnings.append(f"{_count(len(latin1), 'caption')} not valid UTF-8, read as latin-1: {_names(latin1)}")
    return ImageDataset(images=images, resolution=size, warnings=warnings, root=root,
                        trigger_word=trigger_word.strip())


def _find_images(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image path, repeats) in sorted order: the folder's own images first, then each N_name folder."""
    found = [(path, 1) for path in _image_files(root)]
    warnings: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p)):
        match = REPEAT_FOLDER.match(sub.name)
        if not match:
            warnings.append(f"Ignored folder {sub.name}/: not a kohya-style N_name repeat folder")
            continue
        repeats = int(match.group(1))
        if repeats == 0:
            warnings.append(f"Ignored folder {sub.name}/: 0 repeats")
            continue
        files = _image_files(sub)
        if not files:
            warnings.append(f"Repeat folder {sub.name}/ has no {ACCEPTED} images")
        found.extend((path, repeats) for path in files)
        nested = sorted(p.name for p in sub.iterdir() if p.is_dir() and not _hidden(p))
        if nested:
            warnings.append(f"Ignored folders inside {sub.name}/ (only one level is read): {_names(nested)}")
    return found, warnings


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(p) and p.is_file())


def _caption_for(image: Path, extension: str, root: Path, latin1: list[str], warnings: list[str]) -> str:
    """The caption beside `image`, or "" when there is none (or it is empty or unreadable)."""
    caption_path = image.with_suffix(extension)
    if not caption_path.is_file():
        return ""
    try:
        caption, was_latin1 = read_caption(caption_path)
    except OSError as exc:
        warnings.append(f"Could not read caption {_relative(caption_path, root)}: {_reason(exc)}")
        return ""
    if was_latin1:
        latin1.append(_relative(caption_path, root))
    return caption


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    hidden = len(names) - MAX_NAMES_IN_MESSAGE
    return shown + (f" and {hidden} more" if hidden > 0 else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
