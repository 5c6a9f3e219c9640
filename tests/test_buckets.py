"""Aspect-ratio buckets: the bucket set, nearest-aspect assignment with the smallest crop, placements in a
dataset, small images, and buckets smaller than the batch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_lab.lora_core.data.buckets import BucketConfig, assign, bucket_sizes, nearest_bucket, place
from lora_lab.lora_core.data.dataset import load_image_folder
from lora_lab.lora_core.errors import DatasetError
from lora_lab.lora_core.data.image_io import fit_to_placement


def picture(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("resolution, lo, hi, step", [(512, 256, 1024, 64), (1024, 256, 2048, 64), (768, 320, 1536, 32),
                                                      ((832, 480), 256, 1024, 16)])
def test_bucket_set_follows_the_kohya_rule(resolution, lo, hi, step):
    config = BucketConfig(resolution, lo, hi, step)
    sizes = bucket_sizes(config)
    area = config.area
    assert len(sizes) == len(set(sizes)) > 1
    for w, h in sizes:
        assert w % step == 0 and h % step == 0 and lo <= w <= hi and lo <= h <= hi
        assert w * h <= area
        assert (h, w) in sizes  # both orientations
    square = math.isqrt(area) // step * step
    assert (min(square, hi), min(square, hi)) in sizes
    # each bucket is the tallest for its width or the widest for its height (no wasted step of pixels)
    for w, h in sizes:
        if (w, h) != (square, square):
            assert h == hi or w == hi or w * (h + step) > area or (w + step) * h > area


def test_small_resolution_with_default_sides_is_its_square():
    assert bucket_sizes(BucketConfig(64, 256, 2048, 64)) == [(64, 64)]
    assert (128, 128) in bucket_sizes(BucketConfig(128, 256, 2048, 64))


def test_bucket_set_sd15_has_the_usual_sizes():
    sizes = bucket_sizes(BucketConfig(512, 256, 1024, 64))
    for expected in [(512, 512), (576, 448), (448, 576), (640, 384), (384, 640), (768, 320), (1024, 256)]:
        assert expected in sizes


@pytest.mark.parametrize("config, culprit", [
    (BucketConfig(512, 256, 1024, 60), "multiple of 8"),
    (BucketConfig(512, 250, 1024, 64), "multiples of the step"),
    (BucketConfig(512, 1024, 512, 64), "larger than the largest"),
    (BucketConfig(48, 64, 1024, 64), "smaller than one bucket step"),
])
def test_bad_bucket_options_are_named(config, culprit):
    with pytest.raises(DatasetError, match=culprit):
        bucket_sizes(config)


@pytest.mark.parametrize("source", [(1000, 1000), (1920, 1080), (1080, 1920), (3000, 1000), (500, 2000), (640, 481),
                                    (123, 457), (4000, 3000), (77, 77)])
def test_nearest_bucket_is_the_smallest_crop_and_crops_one_axis(source):
    sizes = bucket_sizes(BucketConfig(512, 256, 1024, 64))
    placement = assign(source, sizes)
    # the chosen bucket keeps the largest share of the image among all buckets
    kept = {b: place(source, b).kept_fraction for b in sizes}
    assert placement.kept_fraction >= max(kept.values()) - 1e-3
    assert placement.bucket == nearest_bucket(source, sizes)
    # resized to cover the bucket with one side exactly; the cut is along the other side only
    cut_w, cut_h = placement.cut
    assert min(cut_w, cut_h) <= 1 and cut_w >= 0 and cut_h >= 0
    # the window is centered
    assert placement.crop == (cut_w // 2, cut_h // 2)
    # and the cut is what the aspect difference demands (the bucket rule), up to rounding
    a, b = source[0] / source[1], placement.bucket[0] / placement.bucket[1]
    assert placement.kept_fraction == pytest.approx(min(a / b, b / a), abs=2 / min(placement.bucket))


def test_fit_to_placement_matches_geometry():
    rgb = np.random.default_rng(0).random((300, 200, 3), dtype=np.float32)
    placement = assign((200, 300), bucket_sizes(BucketConfig(128, 64, 256, 32)))
    out = fit_to_placement(rgb, placement)
    assert out.shape == (placement.bucket[1], placement.bucket[0], 3)
    assert 0.0 <= out.min() and out.max() <= 1.0
    with pytest.raises(ValueError, match="200x300"):
        fit_to_placement(rgb[:100], placement)


def test_mixed_folder_goes_to_buckets_with_per_image_crop(tmp_path):
    shapes = {"portrait": (300, 500), "landscape": (500, 300), "square": (400, 400), "wide": (640, 256),
              "portrait2": (310, 520), "landscape2": (520, 310)}
    for name, size in shapes.items():
        picture(tmp_path / f"{name}.png", size)
    config = BucketConfig(256, 128, 512, 64)
    ds = load_image_folder(tmp_path, 256, buckets=config)
    sizes = bucket_sizes(config)
    by_name = {i.path.stem: i for i in ds.images}
    for name, size in shapes.items():
        image = by_name[name]
        assert image.placement.source == size
        assert image.placement == assign(size, sizes)
        pixels = image.load_pixels()
        assert pixels.shape == (image.placement.bucket[1], image.placement.bucket[0], 3)
    assert by_name["portrait"].bucket == by_name["portrait2"].bucket
    assert by_name["portrait"].placement.bucket[0] < by_name["portrait"].placement.bucket[1]
    assert by_name["landscape"].placement.bucket[0] > by_name["landscape"].placement.bucket[1]
    assert by_name["square"].placement.bucket == (256, 256)
    summary = ds.summary()
    assert "aspect buckets (base 256x256, sides 128-512 in steps of 64)" in summary
    for key, items in ds.bucket_groups().items():
        assert f"{key[0]}x{key[1]}: {len(items)} image" in summary


def test_buckets_off_is_resize_and_center_crop(tmp_path):
    picture(tmp_path / "a.png", (300, 500))
    ds = load_image_folder(tmp_path, 128)
    assert ds.images[0].placement.bucket == (128, 128) and ds.images[0].placement.resized == (128, 213)
    assert ds.images[0].pixels.shape == (128, 128, 3)


def test_small_images_upscaled_with_a_warning_or_skipped(tmp_path):
    picture(tmp_path / "big.png", (600, 600))
    picture(tmp_path / "tiny.png", (40, 60))
    config = BucketConfig(256, 128, 512, 64)

    ds = load_image_folder(tmp_path, 256, buckets=config)
    assert [i.path.name for i in ds.images] == ["big.png", "tiny.png"]
    warning = next(w for w in ds.warnings if "upscaled" in w)
    assert "tiny.png (40x60)" in warning and "big.png" not in warning and "small_images" in warning
    assert ds.images[1].placement.upscaled and not ds.images[0].placement.upscaled

    ds = load_image_folder(tmp_path, 256, buckets=config, small_images="skip")
    assert [i.path.name for i in ds.images] == ["big.png"]
    assert any("Skipped 1 image" in w and "tiny.png" in w for w in ds.warnings)

    with pytest.raises(DatasetError, match="small_images"):
        load_image_folder(tmp_path, 256, buckets=config, small_images="stretch")


def test_all_images_too_small_and_skipped_is_an_error(tmp_path):
    picture(tmp_path / "tiny.png", (40, 60))
    with pytest.raises(DatasetError, match="smaller than its bucket") as err:
        load_image_folder(tmp_path, 256, buckets=BucketConfig(256, 128, 512, 64), small_images="skip")
    assert "tiny.png" in str(err.value)


def test_bucket_smaller_than_batch_names_bucket_and_files(tmp_path):
    for i in range(3):
        picture(tmp_path / f"sq{i}.png", (256, 256), seed=i)
    picture(tmp_path / "lonely_wide.png", (600, 200))
    ds = load_image_folder(tmp_path, 256, buckets=BucketConfig(256, 128, 512, 64))
    ds.check_batch_size(1)
    with pytest.raises(DatasetError) as err:
        ds.check_batch_size(2)
    message = str(err.value)
    wide = next(i for i in ds.images if i.path.name == "lonely_wide.png").placement.bucket
    assert f"bucket {wide[0]}x{wide[1]} holds 1 image (lonely_wide.png)" in message
    assert "batch_size 2" in message and "grad_accumulation" in message and "sq0.png" not in message


def test_exif_rotation_counts_for_the_bucket(tmp_path):
    stored = Image.fromarray(np.zeros((200, 400, 3), np.uint8))  # stored landscape
    exif = stored.getexif()
    exif[0x0112] = 6  # shown rotated: portrait
    stored.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    ds = load_image_folder(tmp_path, 256, buckets=BucketConfig(256, 128, 512, 64))
    placement = ds.images[0].placement
    assert placement.source == (200, 400) and placement.bucket[0] < placement.bucket[1]
    assert ds.images[0].load_pixels().shape == (placement.bucket[1], placement.bucket[0], 3)


def test_kohya_bucket_metadata(tmp_path):
    import json

    from lora_lab.lora_core.data.dataset_metadata import dataset_metadata

    picture(tmp_path / "a.png", (300, 500))
    picture(tmp_path / "3_more" / "b.png", (500, 300))
    picture(tmp_path / "3_more" / "c.png", (510, 300))
    meta = dataset_metadata(load_image_folder(tmp_path, 256, buckets=BucketConfig(256, 128, 512, 64)))
    info = json.loads(meta["ss_bucket_info"])
    assert sorted(b["count"] for b in info["buckets"].values()) == [1, 6]  # repeats counted, as kohya does
    assert meta["ss_enable_bucket"] == "true" and meta["ss_min_bucket_reso"] == "128"
    assert json.loads(meta["ss_dataset_dirs"])["3_more"] == {"n_repeats": 3, "img_count": 2}
    assert all(isinstance(v, str) for v in meta.values())


def test_dataset_fingerprint_follows_content_and_settings(tmp_path):
    from lora_lab.lora_core.data.augment import AugmentConfig
    from lora_lab.lora_core.data.dataset_metadata import dataset_fingerprint

    picture(tmp_path / "a.png", (300, 500))
    picture(tmp_path / "b.png", (500, 300))
    config = BucketConfig(256, 128, 512, 64)
    base = dataset_fingerprint(load_image_folder(tmp_path, 256, buckets=config))
    assert base == dataset_fingerprint(load_image_folder(tmp_path, 256, buckets=config))
    assert base != dataset_fingerprint(load_image_folder(tmp_path, 256))  # other placements
    assert base != dataset_fingerprint(load_image_folder(tmp_path, 256, buckets=config, augment=AugmentConfig(flip=0.5)))
    picture(tmp_path / "b.png", (500, 300), seed=9)
    assert base != dataset_fingerprint(load_image_folder(tmp_path, 256, buckets=config))
