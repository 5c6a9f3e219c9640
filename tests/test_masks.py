"""Masked loss: masks come from alpha or mask/ files and follow the image's bucket crop, jitter and flip onto the
latent grid; the loss of a masked-out region gives the LoRA no gradient; a mask of ones changes no bit of a run;
masks are cached under keys naming them; the summary and CLI config know them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lora_lab.lora_core.adapters.algorithms import new_adapter
from lora_lab.lora_core.adapters.injection import attached
from lora_lab.lora_core.cache.encoding_cache import EncodingCache, MemoryStore
from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
from lora_lab.lora_core.cli.tiny_models import TinyTextEncoder, tiny_unet
from lora_lab.lora_core.data.augment import AugmentConfig
from lora_lab.lora_core.data.buckets import BucketConfig
from lora_lab.lora_core.data.dataset import load_image_folder
from lora_lab.lora_core.data.dataset_metadata import dataset_fingerprint, dataset_metadata
from lora_lab.lora_core.data.masks import MaskConfig, loss_weight
from lora_lab.lora_core.data.samples import TrainSample
from lora_lab.lora_core.data.training_samples import build_training_data
from lora_lab.lora_core.errors import DatasetError
from lora_lab.lora_core.training.loss_options import LossOptions
from lora_lab.lora_core.training.objective import diffusion_loss
from lora_lab.lora_core.training.trainer import TrainConfig, train

from test_training_samples import FakeEncoders

SHAPES = [(96, 64), (100, 60), (64, 96), (64, 64)]
BUCKETS = BucketConfig(64, min_side=32, max_side=128, step=16)


def make_masked_folder(folder: Path, shapes=SHAPES, masks=True) -> Path:
    """Random RGB images whose mask/ file is the image's own red channel (so a fitted mask equals the red
    channel of the fitted image exactly: the same resize, crop and flip)."""
    (folder / "mask").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(shapes):
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"thing {i}")
        if masks:
            Image.fromarray(pixels[..., 0], "L").save(folder / "mask" / f"img{i}.png")
    return folder


def build(dataset, fake=None, folder=None):
    cache = EncodingCache(folder, memory=MemoryStore())
    return build_training_data(dataset, (fake or FakeEncoders()).encoders(), cache, seed=0), cache


def test_masks_follow_the_bucket_crop_jitter_and_flip_onto_the_latent_grid(tmp_path):
    augment = AugmentConfig(flip=0.5, crop_jitter=0.3, variants=2)
    ds = load_image_folder(make_masked_folder(tmp_path / "d"), 64, buckets=BUCKETS, augment=augment,
                           masks=MaskConfig("mask_folder"))
    data, _ = build(ds)
    assert len(data.samples) == 2 * 2 * len(SHAPES) and {i.flipped for i in data.infos} == {False, True}
    assert {i.placement.crop for i in data.infos} != {(0, 0)}  # some windows really move
    for sample, info in zip(data.samples, data.infos):
        # FakeEncoders' latent channel 0 is the 8x8 mean of the fitted (flipped) image's red channel
        assert sample.mask.shape == sample.latent.shape[-2:]
        torch.testing.assert_close(sample.mask, sample.latent[0], rtol=0, atol=1e-6)
    plain = [s.mask for s, i in zip(data.samples, data.infos) if not i.flipped]
    assert not torch.equal(plain[0], torch.flip(plain[0], dims=(-1,)))  # the flip check could fail


def test_alpha_masks_and_both_multiply(tmp_path):
    folder = tmp_path / "d"
    (folder / "mask").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 255, (64, 64, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "a.png")
    Image.fromarray(rgba[..., 3], "L").save(folder / "b.png")  # b: opaque grey; its mask file = a's alpha
    Image.fromarray(rgba[..., 3], "L").save(folder / "mask" / "b.png")
    Image.fromarray(rgba[..., 1], "L").save(folder / "mask" / "a.png")
    for name in "ab":
        (folder / f"{name}.txt").write_text(name)
    masks = {}
    for source in ("alpha", "mask_folder", "both"):
        ds = load_image_folder(folder, 64, masks=MaskConfig(source))  # 64x64 at 64: no resize, no crop
        data, _ = build(ds)
        masks[source] = {i.item.path.name: s.mask for s, i in zip(data.samples, data.infos)}
    assert masks["alpha"]["b.png"] is None  # no alpha channel
    torch.testing.assert_close(masks["alpha"]["a.png"], masks["mask_folder"]["b.png"], rtol=0, atol=0)
    alpha, green = rgba[..., 3] / 255.0, rgba[..., 1] / 255.0
    product = torch.from_numpy((alpha * green).astype(np.float32)).reshape(8, 8, 8, 8).mean((1, 3))
    torch.testing.assert_close(masks["both"]["a.png"], product, rtol=0, atol=1e-6)


def test_the_floor_and_a_bad_mask_are_named(tmp_path):
    m = torch.tensor([[0.0, 0.5, 1.0]])
    torch.testing.assert_close(loss_weight(m, 0.1), torch.tensor([[0.1, 0.55, 1.0]]))
    assert loss_weight(m, 0.0) is m
    with pytest.raises(DatasetError, match="mask must be one of off, alpha, mask_folder, both"):
        MaskConfig("red")
    with pytest.raises(DatasetError, match="mask_floor must be between 0 and 1"):
        MaskConfig("alpha", 1.5)
    folder = make_masked_folder(tmp_path / "d")
    Image.new("L", (10, 10)).save(folder / "mask" / "img1.png")
    with pytest.raises(DatasetError, match=r"Mask .*img1\.png is 10x10 but its image img1\.png is 100x60"):
        load_image_folder(folder, 64, buckets=BUCKETS, masks=MaskConfig("both"))
    load_image_folder(folder, 64, buckets=BUCKETS)  # masks off: the mask folder is not read


def test_summary_counts_masked_images_and_the_mask_folder_is_not_a_repeat_folder(tmp_path):
    folder = make_masked_folder(tmp_path / "d")
    (folder / "mask" / "img3.png").unlink()
    sub = make_masked_folder(folder / "5_more", shapes=[(64, 64)])
    ds = load_image_folder(folder, 64, buckets=BUCKETS, masks=MaskConfig("mask_folder", 0.1))
    assert sum(i.mask is not None for i in ds.images) == 4
    assert "masked loss (mask_folder, floor 0.1): 4 of 5 images masked (0 by alpha, 4 by a mask file)" in ds.summary()
    assert not any("mask" in w and "Ignored" in w for w in ds.warnings)
    assert any("1 image without a mask" in w and "img3.png" in w for w in ds.warnings)
    meta = dataset_metadata(ds)
    assert meta["ss_masked_loss"] == "true" and '"masked_images": 4' in meta["lora_lab_masks"]
    assert sub.name == "5_more"
    off = load_image_folder(folder, 64, buckets=BUCKETS)
    assert "masked loss" not in off.summary() and "ss_masked_loss" not in dataset_metadata(off)
    assert any("Ignored folder mask/" in w for w in off.warnings)  # masks off: as before
    assert dataset_fingerprint(ds) != dataset_fingerprint(off)


def test_masks_are_cached_with_the_latents_and_keyed_by_their_bytes(tmp_path):
    folder, cache = make_masked_folder(tmp_path / "d"), tmp_path / "c"
    ds = lambda: load_image_folder(folder, 64, buckets=BUCKETS, masks=MaskConfig("mask_folder"))  # noqa: E731
    _, first = build(ds(), folder=cache)
    assert first.stats["masks"].encoded == len(SHAPES)
    again, second = build(ds(), folder=cache)
    assert second.stats["masks"].encoded == 0 and second.stats["masks"].disk_hits == len(SHAPES)
    Image.new("L", (100, 60), 255).save(folder / "mask" / "img1.png")  # edit one mask: only it is re-read
    edited, third = build(ds(), folder=cache)
    assert third.stats["masks"].encoded == 1 and third.stats["latents"].encoded == 0
    assert torch.equal(edited.samples[1].mask, torch.ones(edited.samples[1].latent.shape[-2:]))
    assert not torch.equal(again.samples[1].mask, edited.samples[1].mask)


class PixelBackend:
    """A flow model whose every output pixel depends only on its own input pixel (1x1 convolutions), so which
    latent cells' losses reach the gradient is exactly what the mask says."""

    prediction, device = "flow", "cpu"

    def __init__(self):
        torch.manual_seed(0)
        self.root = nn.Sequential(nn.Conv2d(4, 8, 1), nn.SiLU(), nn.Conv2d(8, 4, 1)).requires_grad_(False)

    def sigma_from_u(self, u):
        return u

    def noisy(self, x0, noise, sigma):
        s = sigma.reshape(-1, *[1] * (x0.dim() - 1))
        return (1 - s) * x0 + s * noise

    def denoise(self, x_t, sigma, conds):
        return x_t - sigma.reshape(-1, 1, 1, 1) * self.root(x_t)

    def c_out(self, sigma):
        return -sigma


def _lora_grads(backend, x0, noise, masks, options=LossOptions()):
    g = torch.Generator().manual_seed(0)
    adapters = {}
    for name in ("0", "2"):
        adapter = new_adapter(dict(backend.root.named_modules())[name], 2, 2.0, 0.0, g)
        with torch.no_grad():
            adapter.up.normal_(generator=g)
        adapters[name] = adapter
    with attached(backend.root, adapters):
        diffusion_loss(backend, x0, noise, torch.tensor([0.3, 0.7]), [None, None], options, masks).sum().backward()
    return torch.cat([p.grad.flatten() for a in adapters.values() for p in a.parameters()])


@pytest.mark.parametrize("loss_type", ["l2", "huber"])
def test_a_masked_out_region_gives_the_lora_no_gradient(loss_type):
    backend, options = PixelBackend(), LossOptions(loss_type=loss_type)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    masks = torch.ones(2, 6, 6)
    masks[:, :, 3:] = 0  # the right half is masked out (floor 0)
    changed_x0, changed_noise = x0.clone(), noise.clone()
    changed_x0[..., 3:] += 5 * torch.randn(2, 4, 6, 3, generator=g)  # anything at all in the masked-out half
    changed_noise[..., 3:] = -changed_noise[..., 3:]
    grads = _lora_grads(backend, x0, noise, masks, options)
    assert grads.abs().max() > 0
    torch.testing.assert_close(_lora_grads(backend, changed_x0, changed_noise, masks, options), grads, rtol=0, atol=0)
    assert not torch.equal(_lora_grads(backend, changed_x0, changed_noise, None, options),
                           _lora_grads(backend, x0, noise, None, options))  # unmasked, the change matters
    assert _lora_grads(backend, x0, noise, torch.zeros(2, 6, 6), options).abs().max() == 0


def test_the_loss_is_the_mean_over_all_elements_of_mask_times_loss():
    backend = PixelBackend()
    g = torch.Generator().manual_seed(2)
    x0, noise, u = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g), torch.tensor([0.3, 0.7])
    masks = torch.rand(2, 6, 6, generator=g)
    with torch.no_grad():
        denoised = backend.denoise(backend.noisy(x0, noise, u), u, None)
        per_element = ((denoised - x0) / -u.reshape(-1, 1, 1, 1)).pow(2)
        expected = (per_element * masks[:, None]).flatten(1).mean(1)  # kohya: multiply, then mean over everything
        ours = diffusion_loss(backend, x0, noise, u, [None, None], masks=masks)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss_type", ["l2", "huber"])
def test_a_mask_of_ones_changes_no_bit_of_a_run(loss_type):
    unet = tiny_unet(seed=0, channels=(16, 32)).requires_grad_(False)
    te, g = TinyTextEncoder(), torch.Generator().manual_seed(1)
    latents = [torch.randn(4, 8, 8, generator=g) for _ in range(3)]
    conds = [{"encoder_hidden_states": te(f"photo {i}")} for i in range(3)]
    config = TrainConfig(steps=3, learning_rate=1e-3, rank=4, alpha=4.0, targets="attention_mlp", batch_size=2,
                         loss=LossOptions(loss_type=loss_type))
    runs = []
    for mask in (None, torch.ones(8, 8)):
        samples = [TrainSample(x, c, f"photo {i}", mask=mask) for i, (x, c) in enumerate(zip(latents, conds))]
        runs.append(train(DDPMUNetBackend(unet), samples, config))
    plain, ones = runs
    assert plain.losses == ones.losses
    for name, w in plain.lora.modules.items():
        assert torch.equal(w.down, ones.lora.modules[name].down) and torch.equal(w.up, ones.lora.modules[name].up)
    half = torch.ones(8, 8)
    half[:, 4:] = 0
    masked = train(DDPMUNetBackend(unet), [TrainSample(x, c, "", mask=half) for x, c in zip(latents, conds)], config)
    assert masked.losses != plain.losses  # the comparison could fail


def test_cli_config_takes_the_mask_keys():
    from lora_lab.lora_core.cli.config import ConfigError, check_values, parse_config

    base = {"model": {"path": "m"}, "data": {"path": "d", "mask": "alpha", "mask_floor": 0}}
    config = parse_config(base)
    assert (config.data.mask, config.data.mask_floor) == ("alpha", 0.0)
    check_values(config)
    with pytest.raises(ConfigError, match=r"\[data\] mask must be one of off, alpha, mask_folder, both"):
        check_values(parse_config({**base, "data": {"path": "d", "mask": "red"}}))
    with pytest.raises(ConfigError, match="image datasets only"):
        check_values(parse_config({**base, "data": {"path": "d", "mask": "both", "video": {"enabled": True}}}))
