"""The dataset node's summary text: counts, buckets, validation, caption and augmentation settings, cache, warnings."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from .dataset_files import count, names, relative

if TYPE_CHECKING:
    from .dataset import ImageDataset


def summary(dataset: ImageDataset) -> str:
    noun = dataset.noun
    w, h = dataset.resolution
    where = f" from {dataset.root}" if dataset.root else ""
    head = f"{count(len(dataset.images), noun)}, {count(len(dataset.expanded()), 'sample')} per epoch"
    lines = [head + (f" at {w}x{h}" if dataset.buckets is None else "") + where]
    lines += _buckets(dataset)
    per_folder = defaultdict(list)
    for image in dataset.images:
        per_folder[image.folder].append(image)
    for folder, images in per_folder.items():
        lines.append(f"  {folder}: {count(len(images), noun)} x {count(images[0].repeats, 'repeat')}")
    if dataset.validation:
        root = dataset.root or dataset.validation[0].path.parent
        lines.append(f"validation: {count(len(dataset.validation), noun)} held out "
                     f"({names([relative(i.path, root) for i in dataset.validation])})")
    lines += _settings(dataset)
    if dataset.warnings:
        lines.append(f"{count(len(dataset.warnings), 'warning')}:")
        lines.extend(f"  - {warning}" for warning in dataset.warnings)
    return "\n".join(lines)


def _buckets(dataset: ImageDataset) -> list[str]:
    groups = dataset.bucket_groups()
    if dataset.buckets is None and len(groups) <= 1:
        return []
    cfg = dataset.buckets
    title = ("aspect buckets" if cfg is None else
             f"aspect buckets (base {_size(cfg.resolution)}, sides {cfg.min_side}-{cfg.max_side} in steps of {cfg.step})")
    lines = [f"{title}: {count(len(groups), 'bucket')} in use"]
    for (bw, bh, frames), items in groups.items():
        samples = sum(i.repeats for i in items)
        shape = f"{bw}x{bh}" + (f", {frames} frames" if frames > 1 or dataset.kind == "videos" else "")
        lines.append(f"  {shape}: {count(len(items), dataset.noun)}" + (f" ({samples} samples)" if samples != len(items) else ""))
    return lines


def _settings(dataset: ImageDataset) -> list[str]:
    lines = []
    t = dataset.caption_transforms
    if t.active:
        parts = [f"dropout {t.dropout:g}"] if t.dropout else []
        if t.shuffle:
            parts.append("tags shuffled" + (f" after the first {t.keep_tokens}" if t.keep_tokens else "")
                         + (f" / after {t.keep_separator!r}" if t.keep_separator else ""))
        if t.tag_dropout:
            parts.append(f"tag dropout {t.tag_dropout:g}")
        lines.append("captions per step: " + ", ".join(parts) + " (needs the CLIP input of Train LoRA)")
    a = dataset.augment
    if a.flip or a.jitters:
        parts = [f"flip {a.flip:g} (both orientations cached)"] if a.flip else []
        if a.jitters:
            parts.append(f"crop/colour jitter: {a.variant_count} cached variants per {dataset.noun}")
        lines.append("augmentation: " + "; ".join(parts))
    if dataset.masks.active:
        lines.append(_masks(dataset))
    if dataset.pairs is not None:
        lines.append(_pairs(dataset))
    lines.append(f"cache: {dataset.cache_folder if dataset.cache_folder else 'memory only'}")
    return lines


def _masks(dataset: ImageDataset) -> str:
    """How many training images have a loss mask, and from where."""
    masked = [i.mask for i in dataset.images if i.mask is not None]
    alpha = sum(m.alpha for m in masked)
    files = sum(m.file is not None for m in masked)
    return (f"masked loss ({dataset.masks.source}, floor {dataset.masks.floor:g}): {len(masked)} of "
            f"{count(len(dataset.images), dataset.noun)} masked ({alpha} by alpha, {files} by a mask file)")


def _pairs(dataset: ImageDataset) -> str:
    """How many controls each image has, from where, and how they are sized."""
    per_image = sorted({len(i.controls) for i in dataset.images})
    each = " or ".join(str(n) for n in per_image)
    pairs = dataset.pairs
    assert pairs is not None
    sized = (f"each in a bucket of its own of about {pairs.resolution}x{pairs.resolution} pixels" if pairs.resolution
             else "each fitted to its image's bucket")
    return (f"pairs: {count(len(dataset.images), dataset.noun)} with {each} control image"
            f"{'' if per_image == [1] else 's'} from {pairs.where()}, {sized}; flips and jitter apply to both")


def _size(resolution) -> str:
    if isinstance(resolution, (tuple, list)):
        return f"{resolution[0]}x{resolution[1]}"
    return f"{resolution}x{resolution}"
