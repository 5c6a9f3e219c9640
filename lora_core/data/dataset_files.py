"""Finding a dataset's files and their captions: kohya repeat folders, caption files, per-folder defaults.

Layout (images or videos alike):
    folder/a.png, folder/a.txt            repeats 1
    folder/10_mychar/b.jpg, b.txt         repeats 10 (one level of N_name folders, as kohya)
    folder/10_mychar/default_caption.txt  caption for the images of that folder that have none
A caption comes from the file's own caption file, else its folder's default_caption file, else the
dataset's default caption (and a warning names those files).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .captions import read_caption
from ..errors import DatasetError

REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
FOLDER_DEFAULT_STEM = "default_caption"
MAX_NAMES_IN_MESSAGE = 20


@dataclass
class Found:
    path: Path
    repeats: int
    caption: str  # "" when neither the file nor its folder has one
    caption_source: str  # "file", "folder" or ""


@dataclass
class FoundFiles:
    entries: list[Found] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    latin1: list[str] = field(default_factory=list)


def find_files(root: Path, accept: Callable[[Path], bool], caption_extension: str, what: str,
               noun: str = "images", skip: tuple[str, ...] = ()) -> FoundFiles:
    """Every accepted entry under root (itself, then each N_name folder), sorted, with its caption.

    `accept(path)` says whether a directory entry is a training item (a file, or a frame folder for videos).
    `skip`: folder names that hold something else (mask/), passed over without a warning.
    Raises DatasetError when the folder is missing, unreadable, or holds nothing accepted.
    """
    if not root.exists():
        raise DatasetError(f"Dataset folder not found: {root} (expected a folder of {what})")
    if not root.is_dir():
        raise DatasetError(f"Dataset path is not a folder: {root} (expected a folder of {what})")
    out = FoundFiles()
    try:
        groups = [(root, 1)] + _repeat_folders(root, accept, out.warnings, what, skip)
        for folder, repeats in groups:
            default = _folder_default(folder, caption_extension, root, out)
            for path in _accepted(folder, accept):
                caption = _caption_for(path, caption_extension, root, out)
                source = "file" if caption else ("folder" if default else "")
                out.entries.append(Found(path, repeats, caption or default, source))
    except OSError as exc:  # e.g. permission denied on the folder or a repeat folder
        raise DatasetError(f"Cannot list dataset folder {root}: {reason(exc)}") from exc
    if not out.entries:
        raise DatasetError(
            f"No training {noun} in {root}: expected {what}, directly inside it or in kohya-style repeat folders "
            f"such as 10_name/, each with an optional {caption_extension} caption of the same name")
    return out


def normal_extension(extension: str) -> str:
    """".txt" from "txt" or ".txt"; a file-name ending only: captions are read beside their image, never elsewhere."""
    extension = extension.strip() or ".txt"
    extension = extension if extension.startswith(".") else "." + extension
    if "/" in extension or "\\" in extension or ".." in extension or ":" in extension:
        raise DatasetError(f"caption_extension {extension!r} is not a file-name ending such as '.txt' or '.caption'")
    return extension


def _repeat_folders(root: Path, accept: Callable[[Path], bool], warnings: list[str], what: str,
                    skip: tuple[str, ...] = ()) -> list[tuple[Path, int]]:
    groups = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not hidden(p) and p.name not in skip):
        if accept(sub):
            continue  # a frame folder of the root itself, not a repeat folder
        match = REPEAT_FOLDER.match(sub.name)
        if not match:
            warnings.append(f"Ignored folder {sub.name}/: not a kohya-style N_name repeat folder")
            continue
        repeats = int(match.group(1))
        if repeats == 0:
            warnings.append(f"Ignored folder {sub.name}/: 0 repeats")
            continue
        if not _accepted(sub, accept):
            warnings.append(f"Repeat folder {sub.name}/ has no {what}")
        nested = sorted(p.name for p in sub.iterdir() if p.is_dir() and not hidden(p) and not accept(p)
                        and p.name not in skip)
        if nested:
            warnings.append(f"Ignored folders inside {sub.name}/ (only one level is read): {names(nested)}")
        groups.append((sub, repeats))
    return groups


def _accepted(folder: Path, accept: Callable[[Path], bool]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not hidden(p) and accept(p))


def _folder_default(folder: Path, extension: str, root: Path, out: FoundFiles) -> str:
    path = folder / f"{FOLDER_DEFAULT_STEM}{extension}"
    return _read(path, root, out) if path.is_file() else ""


def _caption_for(item: Path, extension: str, root: Path, out: FoundFiles) -> str:
    """The caption beside `item` (a.png -> a.txt, clip/ -> clip.txt), or "" when there is none or it is empty."""
    path = item.with_suffix(extension) if item.is_file() else item.with_name(item.name + extension)
    return _read(path, root, out) if path.is_file() else ""


def _read(path: Path, root: Path, out: FoundFiles) -> str:
    try:
        caption, was_latin1 = read_caption(path)
    except OSError as exc:
        out.warnings.append(f"Could not read caption {relative(path, root)}: {reason(exc)}")
        return ""
    if was_latin1:
        out.latin1.append(relative(path, root))
    return caption


def hidden(path: Path) -> bool:
    return path.name.startswith(".")


def relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def names(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMES_IN_MESSAGE])
    more = len(items) - MAX_NAMES_IN_MESSAGE
    return shown + (f" and {more} more" if more > 0 else "")


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
