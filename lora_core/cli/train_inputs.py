"""What a `lora-lab train` run trains on: its device, its dataset, and the training samples encoded from it."""

from __future__ import annotations

from pathlib import Path

import torch

from ..cache.encoding_cache import EncodingCache
from ..data.buckets import BucketConfig
from ..data.training_samples import build_training_data
from ..training.distributed import Distributed
from .config import RunConfig


def device(config: RunConfig, dist: Distributed | None) -> torch.device:
    if dist is not None:
        return dist.device
    from ..training.devices import default_device

    if config.model.device != "auto":
        return torch.device(config.model.device)
    return default_device()  # cuda, xpu, mps, else cpu


def load_dataset(config: RunConfig):
    d = config.data
    common = dict(trigger_word=d.trigger_word, default_caption=d.default_caption, caption_extension=d.caption_extension,
                  buckets=BucketConfig(d.resolution if isinstance(d.resolution, int) else tuple(d.resolution),
                                       d.buckets.min_side, d.buckets.max_side, d.buckets.step) if d.buckets.enabled else None,
                  caption_template=d.caption_template, small_images=d.small_images, validation=d.validation,
                  caption_transforms=d.captions, augment=d.augment, cache_folder=d.cache_folder or None)
    resolution = d.resolution if isinstance(d.resolution, int) else tuple(d.resolution)
    if d.video.enabled:
        from ..data.video_dataset import load_video_folder

        v = d.video
        return load_video_folder(d.path, resolution, v.frames, v.frame_sampling, v.target_fps, v.clips_per_video,
                                 include_images=v.include_images, **common)
    from ..data.dataset import load_image_folder
    from ..data.masks import MaskConfig
    from ..data.pairs import PairConfig

    c = d.controls
    pairs = PairConfig(Path(c.folder).expanduser() if c.folder else None, c.resolution) if c.enabled else None
    return load_image_folder(d.path, resolution, masks=MaskConfig(d.mask, d.mask_floor), pairs=pairs, **common)


def training_data(config: RunConfig, dataset, model, dist: Distributed | None):
    """Rank 0 encodes first (into the disk cache, if any); the other ranks then read what it wrote."""
    def build():
        cache = EncodingCache(dataset.cache_folder)
        with torch.no_grad():
            return build_training_data(dataset, model.encoders, cache, seed=config.train.seed,
                                       batch_size=config.train.batch_size)
    if dist is None or dataset.cache_folder is None:
        return build()
    data = build() if dist.is_main else None
    dist.barrier()
    return data if data is not None else build()
