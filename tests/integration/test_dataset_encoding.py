"""Train LoRA's data preparation with ComfyUI's real VAE and CLIP (random SD1.5, in this process): the cache
counts (second run encodes nothing; one edited image re-encodes one; another VAE re-encodes all), bucket
shapes, and the conditioning-list path."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .comfy_inprocess import call_node, load_checkpoint, register_lora_lab_nodes


@pytest.fixture(scope="module")
def sd15(comfy, sd15_checkpoint):
    register_lora_lab_nodes()
    return load_checkpoint(sd15_checkpoint)


class Counted:
    """Counts calls of one method of an object (VAE.encode, CLIP.encode_from_tokens_scheduled) in place."""

    def __init__(self, obj, name: str):
        self.calls = 0
        original = getattr(obj, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        setattr(obj, name, counted)


def folder_of(path: Path, shapes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(shapes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path / f"img{i}.png")
        (path / f"img{i}.txt").write_text(f"a picture number {i}")
    return path


def dataset(folder: Path, cache: Path | str, **kw):
    inputs = dict(folder=str(folder), resolution=64, aspect_buckets=True, trigger_word="", caption_template="",
                  default_caption="", validation=0.0, cache_folder=str(cache))
    (buckets,) = call_node("LoraLabBucketOptions", min_bucket_side=32, max_bucket_side=128, bucket_step=32,
                           small_images="upscale")
    return call_node("LoraLabDataset", bucket_options=buckets, **{**inputs, **kw})


def prepare(model, ds, vae, clip, conditioning=None, batch_size=1):
    from lora_lab.lora_core.encoding_cache import SHARED_MEMORY
    from lora_lab.nodes.training_data import prepare_training_data

    SHARED_MEMORY.clear()  # each call stands for a new ComfyUI process: only the disk cache may answer
    return prepare_training_data(model.clone(), ds, vae, clip, conditioning, batch_size, seed=0)


def test_cache_counts_with_real_encoders(sd15, tmp_path):
    model, clip, vae = sd15
    vae, clip = copy.copy(vae), copy.copy(clip)  # count on shallow copies: the module's objects stay untouched
    vae_calls, clip_calls = Counted(vae, "encode"), Counted(clip, "encode_from_tokens_scheduled")
    folder = folder_of(tmp_path / "data", [(96, 64), (64, 96), (64, 64), (64, 64)])
    cache = tmp_path / "cache"

    ds = dataset(folder, cache)[0]
    data = prepare(model, ds, vae, clip, batch_size=1)
    assert (vae_calls.calls, clip_calls.calls) == (4, 4)
    for sample, info in zip(data.samples, data.infos):
        assert sample.latent.shape == (4, info.placement.bucket[1] // 8, info.placement.bucket[0] // 8)

    prepare(model, dataset(folder, cache)[0], vae, clip)
    assert (vae_calls.calls, clip_calls.calls) == (4, 4), "a second run must encode nothing"

    Image.fromarray(np.full((64, 96, 3), 200, np.uint8)).save(folder / "img0.png")
    prepare(model, dataset(folder, cache)[0], vae, clip)
    assert (vae_calls.calls, clip_calls.calls) == (5, 4), "one edited image re-encodes one latent"

    other = copy.copy(vae)
    other.first_stage_model = copy.deepcopy(vae.first_stage_model)
    with torch.no_grad():
        next(other.first_stage_model.parameters()).add_(0.01)
    other_calls = Counted(other, "encode")
    prepare(model, dataset(folder, cache)[0], other, clip)
    assert other_calls.calls == 4 and clip_calls.calls == 4, "another VAE re-encodes every latent, no caption"


def test_conditioning_list_instead_of_clip(sd15, tmp_path):
    model, clip, vae = sd15
    folder = folder_of(tmp_path / "data", [(64, 64), (64, 64)])
    ds, _summary, captions = dataset(folder, "")
    conditioning = [call_node("CLIPTextEncode", clip=clip, text=text)[0] for text in captions]
    data = prepare(model, ds, vae, None, conditioning=conditioning)
    assert len(data.samples) == 2
    from lora_lab.lora_core.errors import DatasetError

    with pytest.raises(DatasetError, match="1 entries but the dataset has 2 captions"):
        prepare(model, ds, vae, None, conditioning=conditioning[:1])
