"""Dataset -> trainer samples through the cache: what is encoded how often (the property the cache exists
for), flips, conditioning lists, per-step captions, sizes for SDXL, undecodable files, and determinism of
whole runs with buckets, flip, caption dropout and tag shuffling on."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_lab.lora_core.files.safetensors_io import safetensors_bytes
from lora_lab.lora_core.data.augment import AugmentConfig, flipped_crop
from lora_lab.lora_core.data.buckets import BucketConfig
from lora_lab.lora_core.data.caption_transforms import CaptionTransforms, StepCaption
from lora_lab.lora_core.data.dataset import load_image_folder
from lora_lab.lora_core.cache.encoding_cache import EncodingCache, MemoryStore
from lora_lab.lora_core.errors import DatasetError
from lora_lab.lora_core.data.training_samples import Encoders, build_training_data

SHAPES = [(96, 64), (100, 60), (64, 96), (60, 100), (64, 64), (70, 70)]
BUCKETS = BucketConfig(64, min_side=32, max_side=128, step=16)


def make_folder(folder: Path, shapes=SHAPES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(shapes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"tag{i}, red, blue, green")
    return folder


class FakeEncoders:
    """Deterministic stand-ins for a VAE (8x average pool into 4 channels) and a text encoder, counting calls."""

    def __init__(self, vae_id: str = "vae-1"):
        self.pixel_calls: list[torch.Tensor] = []
        self.texts: list[str] = []
        self.vae_id = vae_id

    def pixels(self, batch: torch.Tensor) -> torch.Tensor:
        self.pixel_calls.append(batch)
        x = batch.permute(0, 3, 1, 2)  # (N, 3, H, W)
        pooled = torch.nn.functional.avg_pool2d(x, 8)
        latent = torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)  # (N, 4, h, w)
        return latent if batch.shape[0] == 1 else latent.permute(1, 0, 2, 3)[None]  # clips: (1, 4, T, h, w)

    def text(self, caption: str) -> dict:
        self.texts.append(caption)
        g = torch.Generator().manual_seed(sum(caption.encode()) + len(caption))
        return {"encoder_hidden_states": torch.randn(16, 32, generator=g)}

    def encoders(self, **kwargs) -> Encoders:
        return Encoders(self.pixels, self.vae_id, self.text, "text-1", **kwargs)


def build(dataset, fake: FakeEncoders, memory: MemoryStore | None = None, folder=None, **kwargs):
    cache = EncodingCache(folder if folder is not None else dataset.cache_folder, memory=memory or MemoryStore())
    return build_training_data(dataset, fake.encoders(), cache, seed=kwargs.pop("seed", 0), **kwargs)


def test_second_run_encodes_nothing_editing_one_image_re_encodes_one(tmp_path):
    data_dir = make_folder(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    ds = lambda: load_image_folder(data_dir, 64, buckets=BUCKETS, cache_folder=cache_dir)  # noqa: E731

    first = FakeEncoders()
    build(ds(), first)
    assert len(first.pixel_calls) == len(SHAPES) and len(first.texts) == len(SHAPES)

    second = FakeEncoders()  # a new process: fresh memory, the cache folder is all it has
    data = build(ds(), second)
    assert second.pixel_calls == [] and second.texts == []
    assert "latents: 0 encoded, 6 from cache (6 from disk)" in data.report

    image = data_dir / "img2.png"
    Image.fromarray(np.full((96, 64, 3), 17, np.uint8)).save(image)  # edit one image (same size)
    third = FakeEncoders()
    data = build(ds(), third)
    assert len(third.pixel_calls) == 1 and third.texts == []
    assert torch.allclose(third.pixel_calls[0], torch.full_like(third.pixel_calls[0], 17 / 255))

    (data_dir / "img4.txt").write_text("a new caption")  # edit one caption
    fourth = FakeEncoders()
    build(ds(), fourth)
    assert fourth.pixel_calls == [] and fourth.texts == ["a new caption"]

    other_vae = FakeEncoders(vae_id="vae-2")  # another VAE: every latent is encoded again
    build(ds(), other_vae)
    assert len(other_vae.pixel_calls) == len(SHAPES) and other_vae.texts == []


def test_same_process_second_run_hits_memory(tmp_path):
    ds = load_image_folder(make_folder(tmp_path / "d"), 64, buckets=BUCKETS)
    memory = MemoryStore()
    build(ds, FakeEncoders(), memory=memory)
    again = FakeEncoders()
    data = build(ds, again, memory=memory)
    assert again.pixel_calls == [] and again.texts == [] and "0 encoded" in data.report


def test_latents_have_the_bucket_shape_and_batches_one_shape(tmp_path):
    ds = load_image_folder(make_folder(tmp_path / "d"), 64, buckets=BUCKETS)
    data = build(ds, FakeEncoders(), batch_size=2)
    for sample, info in zip(data.samples, data.infos):
        w, h = info.placement.bucket
        assert sample.latent.shape == (4, h // 8, w // 8)
    for _ in range(20):
        batch = data.order.next_batch(2)
        assert len({tuple(data.samples[i].latent.shape) for i in batch}) == 1


def test_flip_caches_both_orientations_and_the_mirror_is_exact(tmp_path):
    ds = load_image_folder(make_folder(tmp_path / "d"), 64, buckets=BUCKETS, augment=AugmentConfig(flip=0.5))
    fake = FakeEncoders()
    data = build(ds, fake)
    assert len(fake.pixel_calls) == 2 * len(SHAPES) and len(data.samples) == 2 * len(SHAPES)
    for k in range(0, len(fake.pixel_calls), 2):
        plain, mirrored = fake.pixel_calls[k], fake.pixel_calls[k + 1]
        assert torch.equal(mirrored, torch.flip(plain, dims=(-2,)))
    by_item = {}
    for info in data.infos:
        by_item.setdefault(info.item.path.name, []).append(info)
    for infos in by_item.values():
        plain, mirrored = sorted(infos, key=lambda i: i.flipped)
        assert mirrored.crop_top_left == flipped_crop(plain.placement)
    picks = [i for _ in range(300) for i in data.order.next_batch(1)]
    flipped_share = sum(data.infos[i].flipped for i in picks) / len(picks)
    assert 0.4 < flipped_share < 0.6


def test_crop_and_colour_variants_are_cached_too(tmp_path):
    augment = AugmentConfig(crop_jitter=0.2, brightness=0.2, variants=3)
    ds = load_image_folder(make_folder(tmp_path / "d"), 64, buckets=BUCKETS, cache_folder=tmp_path / "c", augment=augment)
    first = FakeEncoders()
    data = build(ds, first)
    assert len(first.pixel_calls) == 3 * len(SHAPES) == len(data.samples)
    second = FakeEncoders()
    build(load_image_folder(tmp_path / "d", 64, buckets=BUCKETS, cache_folder=tmp_path / "c", augment=augment), second)
    assert second.pixel_calls == []


def test_size_information_for_sdxl(tmp_path):
    ds = load_image_folder(make_folder(tmp_path / "d"), 64, buckets=BUCKETS)
    data = build(ds, FakeEncoders())
    for info in data.infos:
        assert info.original_size == info.item.placement.source == SHAPES[int(info.item.path.stem[3:])]
        assert info.target_size == info.placement.bucket
        assert info.crop_top_left == info.placement.crop


def test_make_cond_sees_each_sample(tmp_path):
    ds = load_image_folder(make_folder(tmp_path / "d"), 64, buckets=BUCKETS)
    fake = FakeEncoders()
    seen = []
    encoders = fake.encoders(make_cond=lambda cond, info: seen.append(info.target_size) or (cond, info.target_size))
    data = build_training_data(ds, encoders, EncodingCache(None, memory=MemoryStore()), seed=0)
    assert [s.cond[1] for s in data.samples] == seen == [i.placement.bucket for i in data.infos]


def test_conditioning_list_replaces_the_text_encoder(tmp_path):
    ds = load_image_folder(make_folder(tmp_path / "d"), 64, buckets=BUCKETS, validation=2)
    conds = [f"cond for {c}" for c in ds.captions()]
    encoders = Encoders(FakeEncoders().pixels, "vae", encode_text=None)
    data = build_training_data(ds, encoders, EncodingCache(None, memory=MemoryStore()), seed=0, conditionings=conds)
    for sample, item in zip(data.samples + data.validation, ds.all_items()):
        assert sample.cond == f"cond for {item.caption}"
    assert len(data.validation) == 2

    with pytest.raises(DatasetError, match="has 5 entries but the dataset has 6 captions"):
        build_training_data(ds, encoders, EncodingCache(None, memory=MemoryStore()), seed=0, conditionings=conds[:5])
    with pytest.raises(DatasetError, match="clip input or a conditioning list"):
        build_training_data(ds, encoders, EncodingCache(None, memory=MemoryStore()), seed=0)
    shuffled = load_image_folder(tmp_path / "d", 64, buckets=BUCKETS, caption_transforms=CaptionTransforms(shuffle=True))
    with pytest.raises(DatasetError, match="need Train LoRA's clip input"):
        build_training_data(shuffled, encoders, EncodingCache(None, memory=MemoryStore()), seed=0, conditionings=conds)


def test_per_step_captions_encode_each_distinct_text_once(tmp_path):
    transforms = CaptionTransforms(dropout=0.3, shuffle=True, keep_tokens=1)
    ds = load_image_folder(make_folder(tmp_path / "d"), 64, buckets=BUCKETS, caption_transforms=transforms,
                           validation=1)
    fake = FakeEncoders()
    data = build(ds, fake)
    assert fake.texts == [ds.validation[0].caption]  # validation keeps its fixed caption; the rest wait for steps
    assert all(isinstance(s.cond, StepCaption) for s in data.samples)
    g = torch.Generator().manual_seed(0)
    drawn = [data.samples[i % len(data.samples)].cond.draw(g) for i in range(400)]
    texts = fake.texts[1:]
    assert len(texts) == len(set(texts)) > 10 and "" in texts
    assert all(isinstance(d["encoder_hidden_states"], torch.Tensor) for d in drawn)


def test_undecodable_file_is_skipped_and_named(tmp_path):
    data_dir = make_folder(tmp_path / "d", shapes=[(64, 64)] * 3)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (data_dir / "half.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # passes the header read
    ds = load_image_folder(data_dir, 64, buckets=BUCKETS)
    assert len(ds.images) == 4
    data = build(ds, FakeEncoders())
    assert len(data.samples) == 3
    assert any("half.jpg" in w and "could not be decoded" in w for w in data.warnings)


def test_batch_size_checked_before_encoding(tmp_path):
    ds = load_image_folder(make_folder(tmp_path / "d", shapes=[(64, 64), (64, 64), (120, 40)]), 64, buckets=BUCKETS)
    fake = FakeEncoders()
    with pytest.raises(DatasetError, match="img2.png"):
        build(ds, fake, batch_size=2)
    assert fake.pixel_calls == []


# ---- whole runs with the tiny diffusers models ---------------------------------------------------------

def _lora_bytes(tmp_path: Path, seed: int, with_validation: bool = False) -> tuple[bytes, list[float]]:
    from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
    from lora_lab.lora_core.cli.tiny_models import TinyTextEncoder, tiny_unet, tiny_vae
    from lora_lab.lora_core.training.trainer import TrainConfig, train
    from lora_lab.lora_core.training.validation import ValidationLoss

    data_dir = tmp_path / "d"
    if not data_dir.exists():
        make_folder(data_dir, shapes=SHAPES + [(96, 64), (64, 96)])
    ds = load_image_folder(data_dir, 64, trigger_word="ohwx", buckets=BUCKETS, validation=2 if with_validation else 0,
                           caption_transforms=CaptionTransforms(dropout=0.2, shuffle=True, keep_tokens=1),
                           augment=AugmentConfig(flip=0.5))
    vae, text = tiny_vae(0), TinyTextEncoder(dim=32)

    def pixels(batch):
        with torch.no_grad():
            return vae.encode(batch.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean

    encoders = Encoders(pixels, "tiny-vae", lambda t: {"encoder_hidden_states": text(t)}, "tiny-text")
    data = build_training_data(ds, encoders, EncodingCache(None, memory=MemoryStore()), seed=seed, batch_size=2)
    backend = DDPMUNetBackend(tiny_unet(0).requires_grad_(False))
    validate = ValidationLoss(backend, data.validation, every=2) if with_validation else None
    result = train(backend, data.samples, TrainConfig(steps=4, batch_size=2, rank=4, alpha=4, seed=seed,
                                                       learning_rate=1e-3), order=data.order, validate=validate)
    return safetensors_bytes(result.lora.kohya_state_dict()), result.losses


@pytest.mark.slow
def test_same_seed_same_lora_bytes_with_buckets_flip_dropout_and_shuffle(tmp_path):
    a, losses_a = _lora_bytes(tmp_path, seed=5)
    b, losses_b = _lora_bytes(tmp_path, seed=5)
    c, _ = _lora_bytes(tmp_path, seed=6)
    assert a == b and losses_a == losses_b
    assert a != c


def test_text_each_step_encodes_the_drawn_caption_at_every_draw_and_caches_no_text(tmp_path):
    """Text-encoder training: make_cond gets the step's caption text at every draw (so the encoder being
    trained runs each step), validation gets the plain caption, and no text goes through the cache."""
    transforms = CaptionTransforms(shuffle=True, keep_tokens=1)
    ds = load_image_folder(make_folder(tmp_path / "d"), 64, buckets=BUCKETS, caption_transforms=transforms,
                           validation=1)
    fake = FakeEncoders()
    made: list[tuple[str, bool]] = []

    def make_cond(text, info):
        made.append((text, info.per_step))
        return {"text": text}

    cache = EncodingCache(None, memory=MemoryStore())
    data = build_training_data(ds, Encoders(fake.pixels, "vae-1", None, "", make_cond=make_cond, text_each_step=True),
                               cache, seed=0)
    assert made == [] and fake.texts == [] and "text" not in cache.stats  # nothing encoded up front
    g = torch.Generator().manual_seed(5)
    sample = data.samples[0]
    first, second = sample.cond.draw(g), sample.cond.draw(g)
    assert len(made) == 2 and all(per_step for _, per_step in made)
    # the shuffled caption of this draw, with the kept token first, re-encoded at each draw
    expected = transforms.apply(sample.caption, torch.Generator().manual_seed(5))
    assert first == {"text": expected}
    assert second["text"].split(", ")[0] == sample.caption.split(", ")[0]
    assert sorted(second["text"].split(", ")) == sorted(sample.caption.split(", "))
    val = data.validation[0]
    state = g.get_state()
    assert val.cond.draw(g) == {"text": val.caption}  # validation: the plain caption, drawing nothing
    assert torch.equal(g.get_state(), state)
