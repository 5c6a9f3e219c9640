"""Paired datasets for edit models: each training image (the target) with the control images the model sees.

    folder/a.png, folder/control/a.jpg                  one control (same stem, any image extension)
    folder/control_2/a.png, folder/control_3/a.webp     more controls, in that order (references 2, 3, ...)
    folder/10_x/b.png, folder/10_x/control/b.png        repeat folders have their own
    or a second folder laid out like the dataset:       controls/a.png pairs a.png, controls/10_x/b.png 10_x/b.png

A target needs every control its folder has (one from each control folder, or its file in the second folder):
one without is left out and named. How a control is fitted (its base Placement, decided here):
  control_resolution 0   its target's bucket: resized to cover it and cropped like the target, so an edit pair
                         stays pixel-aligned; its aspect must then be its target's (within one latent cell)
  control_resolution N   a bucket of its own, about N² pixels, nearest to its own aspect (the dataset's bucket
                         rules; square without buckets): for models that take references of any size
Either way the pair is augmented as one: the target's crop jitter (as fractions), flip and colour change
apply to each control too (data/reference_latents.py).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..cache.keys import digest_bytes
from ..errors import DatasetError
from .buckets import BucketConfig, Placement, Size, assign, bucket_sizes, fixed_size, place
from .dataset_files import REPEAT_FOLDER, count, hidden, names, reason, relative
from .image_io import IMAGE_EXTENSIONS, image_size

CONTROL_FOLDER = re.compile(r"^control(?:_([2-9]|[1-9]\d+))?$")  # control = 1, control_2 = 2, ...
ALIGN_TOLERANCE = 8  # px: a control fitted to its target's bucket may be cut this much differently


@dataclass(frozen=True)
class PairConfig:
    """Where controls come from and how they are sized. folder None: control folders beside the targets."""

    folder: Path | None = None
    resolution: int = 0  # 0: the target's bucket; N: a bucket of its own of about N² pixels

    def __post_init__(self) -> None:
        if self.resolution < 0 or self.resolution % 8:
            raise DatasetError(f"control_resolution must be 0 (the target's bucket) or a positive multiple of 8, "
                               f"got {self.resolution}")

    def where(self) -> str:
        return f"the second folder {self.folder}" if self.folder else "control/ folders beside the images"


@dataclass(frozen=True)
class ControlRef:
    """One control image of a target: its file, content hash, upright size and base placement (unjittered)."""

    path: Path
    digest: str
    placement: Placement

    def key(self) -> list:
        return [self.digest, self.placement]


def control_number(name: str) -> int | None:
    """1 for control/, N for control_N/ (N >= 2); None for any other folder name."""
    match = CONTROL_FOLDER.match(name)
    return None if match is None else int(match.group(1) or 1)


def control_folders(folder: Path) -> list[Path]:
    """folder's control folders in reference order."""
    if not folder.is_dir():
        return []
    found = [(control_number(p.name), p) for p in folder.iterdir() if p.is_dir() and not hidden(p)]
    return [p for n, p in sorted((n, p) for n, p in found if n is not None)]


def folders_to_skip(root: Path, config: PairConfig | None) -> tuple[str, ...]:
    """Folder names the dataset listing passes over: the control folders in root and its repeat folders, and the
    second folder when it lies in root."""
    if config is None or not root.is_dir():
        return ()
    skip = {p.name for p in control_folders(root)}
    for sub in root.iterdir():
        if sub.is_dir() and REPEAT_FOLDER.match(sub.name):
            skip |= {p.name for p in control_folders(sub)}
    if config.folder is not None and config.folder.parent.resolve() == root.resolve():
        skip.add(config.folder.name)
    return tuple(sorted(skip))


def attach_controls(images: list, root: Path, config: PairConfig, buckets: BucketConfig | None) -> tuple[list, list[str]]:
    """(the images that have all their controls, each with .controls set; warnings naming the rest and the
    controls without a target). Raises DatasetError for duplicate controls, controls of another aspect than
    their target's (when fitted to its bucket), and when no image keeps its controls."""
    if config.folder is not None and not config.folder.is_dir():
        raise DatasetError(f"Control folder not found: {config.folder} (expected images named like those in {root})")
    sources = _Sources(root, config)
    own_sizes = _own_sizes(config.resolution, buckets) if config.resolution else []
    kept, missing, unreadable, misaligned = [], [], [], []
    for image in images:
        files = sources.controls_of(image.path)
        absent = [expected for expected, found in files if found is None]
        if not files or absent:
            missing.append(f"{relative(image.path, root)} (no {', '.join(absent) or 'control'})")
            continue
        refs = []
        for _, path in files:
            assert path is not None
            try:
                source, digest = _probe(path)
            except Exception as error:  # PIL raises many types for bad files: all mean "leave the pair out"
                unreadable.append(f"{sources.name(path)} ({reason(error)})")
                break
            placement = assign(source, own_sizes) if own_sizes else place(source, image.placement.bucket)
            if not own_sizes and _misaligned(placement, image.placement):
                misaligned.append(f"{sources.name(path)} is {source[0]}x{source[1]} but {relative(image.path, root)} "
                                  f"is {image.placement.source[0]}x{image.placement.source[1]}")
            refs.append(ControlRef(path, digest, placement))
        else:
            image.controls = tuple(refs)
            kept.append(image)
    if misaligned:
        raise DatasetError(f"{count(len(misaligned), 'control')} of another aspect than {'its' if len(misaligned) == 1 else 'their'} "
                           f"image: {names(misaligned)}. Fitted to the image's bucket an edit pair must line up: crop "
                           "them alike, or set control_resolution to give each control a bucket of its own")
    warnings = []
    if missing:
        warnings.append(f"Left out {count(len(missing), 'image')} without {'its' if len(missing) == 1 else 'their'} "
                        f"control ({config.where()}): {names(missing)}")
    if unreadable:
        warnings.append(f"Left out {count(len(unreadable), 'pair')} whose control cannot be read: {names(unreadable)}")
    orphans = sources.orphans()
    if orphans:
        warnings.append(f"{count(len(orphans), 'control image')} without a training image of the same name, not "
                        f"used: {names(orphans)}")
    if not kept:
        raise DatasetError(f"No image in {root} has its control images ({config.where()}): "
                           + "; ".join(warnings))
    return kept, warnings


class _Sources:
    """The control files of each target, and which controls were asked for (to name the ones nobody asks for)."""

    def __init__(self, root: Path, config: PairConfig):
        self.root, self.second = root, config.folder
        self.by_folder: dict[Path, list[dict[str, Path]]] = {}
        self.used: set[Path] = set()

    def controls_of(self, target: Path) -> list[tuple[str, Path | None]]:
        """[(where the control should be, the file or None)] in reference order."""
        out = []
        for folder, files in zip(self._folders(target.parent), self._listing(target.parent)):
            found = files.get(target.stem)
            out.append((self.name(folder / (target.stem + ".*")), found))
            if found is not None:
                self.used.add(found)
        return out

    def name(self, path: Path) -> str:
        return relative(path, self.second or self.root) if self.second else relative(path, self.root)

    def orphans(self) -> list[str]:
        """Controls no target asked for; in a second folder, also those in folders that hold no target."""
        listed = [f for files in self.by_folder.values() for f in files]
        if self.second is not None:
            folders = [self.second] + sorted(p for p in self.second.iterdir() if p.is_dir() and not hidden(p))
            listed += [_images_by_stem(f) for f in folders if f not in {self.second / t.relative_to(self.root)
                                                                         for t in self.by_folder}]
        return sorted({self.name(p) for files in listed for p in files.values() if p not in self.used})

    def _folders(self, target_folder: Path) -> list[Path]:
        if self.second is None:
            return control_folders(target_folder)
        return [self.second / target_folder.relative_to(self.root)]

    def _listing(self, target_folder: Path) -> list[dict[str, Path]]:
        if target_folder not in self.by_folder:
            self.by_folder[target_folder] = [_images_by_stem(f) for f in self._folders(target_folder)]
        return self.by_folder[target_folder]


def _images_by_stem(folder: Path) -> dict[str, Path]:
    """stem -> image file in folder; two images of one stem are an error naming them."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                       and not hidden(p)):
        if path.stem in found:
            raise DatasetError(f"Two control images named {path.stem!r} in {folder}: {found[path.stem].name} and "
                               f"{path.name}; keep one")
        found[path.stem] = path
    return found


def _probe(path: Path) -> tuple[Size, str]:
    """(upright size, content hash) from one read; a truncated PNG fails here (verify checks CRCs)."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    return image_size(io.BytesIO(data)), digest_bytes(data)


def _misaligned(control: Placement, target: Placement) -> bool:
    """Fitted to the same bucket, the two would be cut differently by more than ALIGN_TOLERANCE pixels."""
    return any(abs(c - t) > ALIGN_TOLERANCE for c, t in zip(control.resized, target.resized))


def _own_sizes(resolution: int, buckets: BucketConfig | None) -> list[Size]:
    """The sizes a control of its own size may take: the dataset's bucket rules at control_resolution."""
    if buckets is None:
        return fixed_size(resolution)
    return bucket_sizes(BucketConfig(resolution, buckets.min_side, buckets.max_side, buckets.step))
