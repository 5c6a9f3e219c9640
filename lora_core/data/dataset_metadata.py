"""kohya's ss_* dataset metadata (buckets, caption and augmentation settings, folders) for a LoRA's header.

The keys and formats are those kohya's train_network.py writes, so tools that read them (the kohya GUI,
Civitai, A1111's metadata view) show how the LoRA was trained.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dataset import ImageDataset


def dataset_metadata(dataset: ImageDataset) -> dict[str, str]:
    groups = dataset.bucket_groups()
    buckets = {str(i): {"resolution": [w, h], "count": sum(item.repeats for item in items)}
               for i, ((w, h, _frames), items) in enumerate(groups.items())}
    errors = [abs(i.placement.source[0] / i.placement.source[1] - i.placement.bucket[0] / i.placement.bucket[1])
              for i in dataset.images if i.placement is not None]
    folders: dict[str, dict[str, int]] = defaultdict(lambda: {"n_repeats": 0, "img_count": 0})
    for image in dataset.images:
        folders[image.folder]["n_repeats"] = image.repeats
        folders[image.folder]["img_count"] += 1
    t, a, cfg = dataset.caption_transforms, dataset.augment, dataset.buckets
    meta = {
        "ss_enable_bucket": json.dumps(cfg is not None),
        "ss_bucket_info": json.dumps({"buckets": buckets, "mean_img_ar_error": sum(errors) / max(len(errors), 1)}),
        "ss_dataset_dirs": json.dumps(dict(folders), sort_keys=True),
        "ss_num_validation_images": str(len(dataset.validation)),
        "ss_caption_dropout_rate": str(t.dropout),
        "ss_caption_tag_dropout_rate": str(t.tag_dropout),
        "ss_shuffle_caption": json.dumps(t.shuffle),
        "ss_keep_tokens": str(t.keep_tokens),
        "ss_flip_aug": json.dumps(a.flip > 0),
        "ss_color_aug": json.dumps(a.colour_jitters),
        "ss_random_crop": json.dumps(a.crop_jitter > 0),
    }
    if cfg is not None:
        meta.update(ss_min_bucket_reso=str(cfg.min_side), ss_max_bucket_reso=str(cfg.max_side),
                    ss_bucket_reso_steps=str(cfg.step))
    if dataset.kind == "videos":
        meta["lora_lab_frame_counts"] = json.dumps(sorted({k[2] for k in groups}))
    if dataset.masks.active:  # only then: files of runs without masks keep their bytes
        masked = sum(i.mask is not None for i in dataset.images)
        meta["ss_masked_loss"] = json.dumps(True)
        meta["lora_lab_masks"] = json.dumps({"source": dataset.masks.source, "floor": dataset.masks.floor,
                                             "masked_images": masked}, sort_keys=True)
    if dataset.pairs is not None:  # likewise: only for paired datasets
        meta["lora_lab_pairs"] = json.dumps(pairs_metadata(dataset), sort_keys=True)
    return meta


def pairs_metadata(dataset: ImageDataset) -> dict:
    """How many references each training image had, and how they were sized (no paths: they name the user's disk)."""
    assert dataset.pairs is not None
    return {"references": sorted({len(i.controls) for i in dataset.images}), "pairs": len(dataset.images),
            "control_resolution": dataset.pairs.resolution or "target bucket"}


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """A hash of everything the run's samples depend on (files' content, placements, frames, captions, repeats,
    validation split, caption transforms, augmentation, masks): equal for the same data, for resume checks."""
    from ..cache.keys import make_key

    items = [[i.digest, i.placement, list(i.frames.indices) if i.frames else None, i.caption, i.repeats]
             for i in dataset.all_items()]
    parts = [items, len(dataset.images), dataset.caption_transforms, dataset.augment]
    if dataset.masks.active:  # only then: a run without masks keeps the fingerprint it always had
        parts.append([dataset.masks, [i.mask.key(i.digest) if i.mask else None for i in dataset.all_items()]])
    if dataset.pairs is not None:  # likewise for control images: their content and fitting
        parts.append([dataset.pairs.resolution, [[c.key() for c in i.controls] for i in dataset.all_items()]])
    return make_key("dataset", *parts)
