"""Caption sidecars: which images of a dataset folder have one, and writing new ones.

The images are those Load Training Images reads (the folder and its kohya N_name repeat folders), in its
order; an image's sidecar is the file of the same name with the caption extension (a.png -> a.txt). A new
sidecar is written to a temp file and linked into place only if no file of that name exists then (so a
caption written meanwhile is never replaced), or, with overwrite, swapped in atomically
(files/atomic.py). Either way a crash never leaves a half-written caption.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..errors import DatasetError
from ..files.atomic import atomic_write_bytes, write_new_file as write_new
from .captions import apply_template
from .dataset_files import count, find_files, names, normal_extension, relative
from .image_io import IMAGE_EXTENSIONS, decode_rgb


@dataclass(frozen=True)
class ImageFile:
    path: Path
    sidecar: Path

    @property
    def captioned(self) -> bool:
        return self.sidecar.exists()


@dataclass
class SidecarReport:
    written: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # a sidecar existed and overwrite was off
    empty: list[str] = field(default_factory=list)  # nothing to write: the caption was empty

    def text(self, root: Path) -> str:
        lines = [f"{root}: wrote {count(len(self.written), 'new caption')}"
                 + (f", replaced {len(self.replaced)}" if self.replaced else "")
                 + f", kept {count(len(self.kept), 'existing caption')}"]
        for title, items in (("written", self.written), ("replaced", self.replaced), ("kept", self.kept),
                             ("empty caption, nothing written", self.empty)):
            if items:
                lines.append(f"  {title}: {names(items)}")
        return "\n".join(lines)


def sidecar_path(image: Path, extension: str = ".txt") -> Path:
    return image.with_suffix(normal_extension(extension))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def dataset_images(root: Path, extension: str = ".txt") -> list[ImageFile]:
    """The images Load Training Images would read from root, in its order, with their sidecar paths."""
    found = find_files(root, _is_image, normal_extension(extension), "images")
    return [ImageFile(entry.path, sidecar_path(entry.path, extension)) for entry in found.entries]


def listed_images(root: Path, extension: str = ".txt") -> list[ImageFile]:
    """The image files directly in root in the directory's own order: the order in which ComfyUI's
    'Load Image Dataset from Folder' loads them, so a list captioned from that node pairs with it."""
    if not root.is_dir():
        raise DatasetError(f"Dataset folder not found: {root}")
    paths = [root / name for name in os.listdir(root) if name.lower().endswith(IMAGE_EXTENSIONS)]
    return [ImageFile(p, sidecar_path(p, extension)) for p in paths if p.is_file()]


def named_images(root: Path, filenames: Sequence[str], extension: str = ".txt") -> list[ImageFile]:
    """Images named relative to root (as Caption Images' filenames output gives them); each must be an image inside."""
    real_root = Path(os.path.realpath(root))
    out, bad = [], []
    for name in filenames:
        path = Path(os.path.realpath(real_root / name))
        if real_root not in path.parents or not _is_image(path):
            bad.append(name)
        else:
            out.append(ImageFile(path, sidecar_path(path, extension)))
    if bad:
        raise DatasetError(f"Not images inside {root}: {names(bad)} (filenames are relative to the folder)")
    return out


def final_caption(generated: str, trigger_word: str = "", template: str = "") -> str:
    """The generated text on one line, with the trigger and template applied as the dataset loader applies them."""
    text = " ".join(generated.split())
    return apply_template(template, text, trigger_word) if text else ""


def pixels_for_captioning(path: Path, max_side: int = 0) -> torch.Tensor:
    """An IMAGE batch of one, (1, H, W, 3) in [0, 1], upright, shrunk (area-averaged) so its longer side is at most
    max_side (0: as it is): vision-language encoders spend tokens on every patch."""
    pixels = torch.from_numpy(decode_rgb(path)).permute(2, 0, 1)[None]
    height, width = pixels.shape[-2:]
    if max_side and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", antialias=True).clamp(0, 1)
    return pixels.permute(0, 2, 3, 1).contiguous()


def write_sidecars(root: Path, images: Sequence[ImageFile], captions: Sequence[str], overwrite: bool = False,
                   report: SidecarReport | None = None) -> SidecarReport:
    """captions[i] into images[i]'s sidecar: new files always, existing ones only with overwrite (into `report`)."""
    if len(images) != len(captions):
        raise DatasetError(f"{count(len(captions), 'caption')} for {count(len(images), 'image')} in {root}: "
                           "one caption per image, in the same order")
    report = report if report is not None else SidecarReport()
    for image, caption in zip(images, captions):
        name = relative(image.sidecar, root)
        if not caption.strip():
            report.empty.append(relative(image.path, root))
        elif overwrite and image.sidecar.exists():
            atomic_write_bytes(image.sidecar, caption.encode("utf-8"))
            report.replaced.append(name)
        elif write_new(image.sidecar, caption.encode("utf-8")):
            report.written.append(name)
        else:
            report.kept.append(name)
    return report
