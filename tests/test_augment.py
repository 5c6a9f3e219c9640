"""Augmentation: seeded variants keyed by content, crop jitter inside the bucket, colour jitter, flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_lab.lora_core.data.augment import (AugmentConfig, Variant, apply_colour, flip_pixels, flipped_crop, jittered,
                                        variants_for)
from lora_lab.lora_core.data.buckets import place
from lora_lab.lora_core.errors import DatasetError


def test_no_jitter_means_one_plain_variant():
    assert variants_for(AugmentConfig(flip=0.5, variants=4), "abc") == [Variant()]
    assert AugmentConfig(variants=4).variant_count == 1


def test_variants_are_seeded_by_content_and_seed():
    config = AugmentConfig(crop_jitter=0.2, brightness=0.3, hue=0.1, variants=3, seed=7)
    a = variants_for(config, "digest-a")
    assert a == variants_for(config, "digest-a") and len(a) == 3 and len({v.key().__str__() for v in a}) == 3
    assert a != variants_for(config, "digest-b")
    assert a != variants_for(AugmentConfig(crop_jitter=0.2, brightness=0.3, hue=0.1, variants=3, seed=8), "digest-a")
    for v in a:
        assert 1.0 <= v.zoom <= 1.2 and 0.7 <= v.brightness <= 1.3 and -0.1 <= v.hue <= 0.1
        assert v.contrast == 1.0 and v.saturation == 1.0  # off stays off


def test_crop_jitter_stays_inside_the_zoomed_image_and_keeps_the_bucket():
    base = place((500, 300), (320, 192))
    for v in variants_for(AugmentConfig(crop_jitter=0.25, variants=16), "x"):
        p = jittered(base, v)
        assert p.bucket == base.bucket and p.source == base.source
        assert p.resized[0] >= base.resized[0] and p.resized[1] >= base.resized[1]
        assert 0 <= p.crop[0] <= p.resized[0] - p.bucket[0] and 0 <= p.crop[1] <= p.resized[1] - p.bucket[1]
        assert p.resized[0] / base.resized[0] == pytest.approx(v.zoom, abs=0.01)
    assert jittered(base, Variant()) is base


def test_flipped_crop_mirrors_the_window():
    p = place((500, 300), (320, 192))  # resized 320 tall -> 533 wide, window at 106
    left, top = flipped_crop(p)
    assert left == p.resized[0] - p.crop[0] - p.bucket[0] and top == p.crop[1]


def test_colour_identity_and_single_changes():
    rgb = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32) * 0.8 + 0.1
    assert apply_colour(rgb, Variant()) is rgb
    np.testing.assert_allclose(apply_colour(rgb, Variant(brightness=1.1)), np.clip(rgb * 1.1, 0, 1), rtol=1e-6)
    grey = apply_colour(rgb, Variant(saturation=0.0))
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)
    flat = apply_colour(rgb, Variant(contrast=0.0))
    assert np.ptp(flat[..., 0]) < 1e-6


def test_hue_rotation_turns_red_into_green_and_keeps_value():
    red = np.array([[[0.9, 0.1, 0.1]]], np.float32)
    np.testing.assert_allclose(apply_colour(red, Variant(hue=1 / 3)), [[[0.1, 0.9, 0.1]]], atol=1e-6)
    np.testing.assert_allclose(apply_colour(red, Variant(hue=-1 / 3)), [[[0.1, 0.1, 0.9]]], atol=1e-6)
    rgb = np.random.default_rng(1).random((16, 16, 3), dtype=np.float32)
    out = apply_colour(rgb, Variant(hue=0.2))
    np.testing.assert_allclose(out.max(-1), rgb.max(-1), atol=1e-6)
    np.testing.assert_allclose(out.min(-1), rgb.min(-1), atol=1e-6)
    np.testing.assert_allclose(apply_colour(rgb, Variant(hue=1.0 - 1e-9)), rgb, atol=1e-5)


def test_flip_mirrors_width_of_images_and_clips():
    image = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    assert torch.equal(flip_pixels(image)[:, 0], image[:, 2])
    clip = torch.rand(5, 4, 6, 3)
    assert torch.equal(flip_pixels(clip)[:, :, 0], clip[:, :, 5])


@pytest.mark.parametrize("kwargs", [{"flip": 1.5}, {"hue": 0.6}, {"variants": 0}, {"brightness": -0.1}])
def test_bad_augmentation_values(kwargs):
    with pytest.raises(DatasetError):
        AugmentConfig(**kwargs)
