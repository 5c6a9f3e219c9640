"""Shared by the dataset integration tests: picture folders, the dataset node with small buckets, call counters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .comfy_inprocess import call_node

MIXED = [(96, 64), (100, 66), (64, 96), (66, 100), (64, 64), (70, 70)]  # landscape, portrait, square pairs


class Counted:
    """Records the calls of one method of an object, in place (on a shallow copy made by the test)."""

    def __init__(self, obj, name: str):
        self.args: list = []
        original = getattr(obj, name)

        def counted(*args, **kwargs):
            self.args.append(args)
            return original(*args, **kwargs)

        setattr(obj, name, counted)

    @property
    def calls(self) -> int:
        return len(self.args)


def make_folder(path: Path, shapes=MIXED) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128] / 127
    for i, (w, h) in enumerate(shapes):
        phase = rng.uniform(0, 6, 3)
        base = np.stack([0.5 + 0.5 * np.sin(6 * xx + 3 * yy * (c + 1) + phase[c]) for c in range(3)], -1)
        Image.fromarray((base[:h, :w] * 255).astype(np.uint8)).save(path / f"img{i}.png")
        (path / f"img{i}.txt").write_text(f"photo {i}, red, blue, green, shapes")
    return path


def load_dataset(folder: Path, cache="", augmentation=None, caption_options=None, validation=0.0, resolution=64):
    (buckets,) = call_node("LoraLabBucketOptions", min_bucket_side=32, max_bucket_side=128, bucket_step=16,
                           small_images="upscale")
    extra = {k: v for k, v in (("augmentation", augmentation), ("caption_options", caption_options)) if v is not None}
    return call_node("LoraLabDataset", folder=str(folder), resolution=resolution, aspect_buckets=True,
                     trigger_word="ohwx", caption_template="", default_caption="", validation=validation,
                     cache_folder=str(cache), bucket_options=buckets, **extra)
