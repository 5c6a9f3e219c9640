"""Paired datasets: control images are found beside their targets (control/, control_2/, ...) or in a second
folder, fitted with their target's bucket (or a bucket of their own), augmented with it (crop jitter, colour,
flip), cached under keys naming their own bytes; missing, unreadable, orphaned and misshapen controls are named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_lab.lora_core.data.augment import AugmentConfig
from lora_lab.lora_core.data.buckets import BucketConfig
from lora_lab.lora_core.data.dataset import load_image_folder
from lora_lab.lora_core.data.dataset_metadata import dataset_fingerprint, dataset_metadata
from lora_lab.lora_core.data.pairs import PairConfig, control_number
from lora_lab.lora_core.cache.encoding_cache import EncodingCache, MemoryStore
from lora_lab.lora_core.errors import DatasetError
from lora_lab.lora_core.data.training_samples import build_training_data

from test_training_samples import FakeEncoders

SHAPES = [(96, 64), (64, 96), (64, 64)]
BUCKETS = BucketConfig(64, min_side=32, max_side=128, step=16)


def save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def paired_folder(folder: Path, shapes=SHAPES, controls=("control",), same_pixels=False) -> Path:
    """Targets img<i>.png; each control folder holds a random image of the target's size (or the target's own
    pixels with same_pixels, so a control's latent must equal its target's after any augmentation)."""
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(shapes):
        target = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        save(folder / f"img{i}.png", target)
        (folder / f"img{i}.txt").write_text(f"edit {i}")
        for name in controls:
            save(folder / name / f"img{i}.png", target if same_pixels else rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return folder


def build(dataset, fake=None, memory=None, folder=None):
    fake = fake or FakeEncoders()
    cache = EncodingCache(folder, memory=memory if memory is not None else MemoryStore())
    return build_training_data(dataset, fake.encoders(), cache, seed=0), cache


def test_control_folder_numbers():
    assert [control_number(n) for n in ("control", "control_2", "control_12", "control_1", "control_0", "controls",
                                        "10_control")] == [1, 2, 12, None, None, None, None]


def test_a_control_is_augmented_with_its_target(tmp_path):
    """A control holding its target's own pixels must give its target's latent for every crop-jitter and colour
    variant and both orientations: the pair is cropped, coloured and flipped as one."""
    augment = AugmentConfig(flip=0.5, crop_jitter=0.4, brightness=0.3, hue=0.2, variants=3, seed=1)
    ds = load_image_folder(paired_folder(tmp_path / "d", same_pixels=True), 64, buckets=BUCKETS, augment=augment,
                           pairs=PairConfig())
    data, _ = build(ds)
    assert len(data.infos) == 3 * 2 * len(SHAPES)
    assert len({i.placement.crop for i in data.infos}) > 3 and {i.flipped for i in data.infos} == {False, True}
    for info in data.infos:
        (reference,) = info.references
        assert reference.shape == (1, *info.latent.shape)
        torch.testing.assert_close(reference[0], info.latent, rtol=0, atol=0)
    flipped = [i for i in data.infos if i.flipped]
    assert not torch.equal(flipped[0].references[0], torch.flip(flipped[0].references[0], dims=(-1,)))


def test_several_controls_in_order_and_in_repeat_folders(tmp_path):
    root = paired_folder(tmp_path / "d", shapes=[(64, 64)], controls=("control_2", "control"))
    paired_folder(root / "3_more", shapes=[(64, 96)], controls=("control",))
    ds = load_image_folder(root, 64, buckets=BUCKETS, pairs=PairConfig())
    by_name = {i.path.relative_to(root).as_posix(): [c.path.parent.name for c in i.controls] for i in ds.images}
    assert by_name == {"img0.png": ["control", "control_2"], "3_more/img0.png": ["control"]}
    assert not any("Ignored folder" in w for w in ds.warnings), ds.warnings
    assert "1 or 2 control images from control/ folders beside the images" in ds.summary()
    data, _ = build(ds)
    assert sorted(len(i.references) for i in data.infos) == [1, 2]


def test_second_folder_mirrors_the_dataset(tmp_path):
    root = paired_folder(tmp_path / "targets", shapes=[(64, 64), (96, 64)], controls=())
    paired_folder(root / "2_x", shapes=[(64, 96)], controls=())
    second = tmp_path / "sources"
    rng = np.random.default_rng(5)
    for rel, (w, h) in {"img0.jpg": (64, 64), "img1.webp": (96, 64), "2_x/img0.png": (64, 96),
                        "stray.png": (64, 64)}.items():
        save(second / rel, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    ds = load_image_folder(root, 64, buckets=BUCKETS, pairs=PairConfig(folder=second))
    pairs = {i.path.relative_to(root).as_posix(): i.controls[0].path.relative_to(second).as_posix() for i in ds.images}
    assert pairs == {"img0.png": "img0.jpg", "img1.png": "img1.webp", "2_x/img0.png": "2_x/img0.png"}
    assert any("without a training image" in w and "stray.png" in w for w in ds.warnings), ds.warnings


def test_missing_orphaned_and_unreadable_controls_are_named(tmp_path):
    root = paired_folder(tmp_path / "d", shapes=[(64, 64)] * 4)
    (root / "control" / "img1.png").unlink()  # a target without its control
    save(root / "control" / "lonely.png", np.zeros((64, 64, 3), np.uint8))  # a control without a target
    (root / "control" / "img2.png").write_bytes((root / "control" / "img2.png").read_bytes()[:60])  # truncated
    ds = load_image_folder(root, 64, buckets=BUCKETS, pairs=PairConfig())
    assert [i.path.name for i in ds.images] == ["img0.png", "img3.png"]
    text = ds.summary()
    assert "Left out 1 image without its control" in text and "img1.png (no control/img1.*)" in text, text
    assert "whose control cannot be read: control/img2.png" in text, text
    assert "1 control image without a training image of the same name, not used: control/lonely.png" in text, text


def test_no_pair_at_all_is_an_error_naming_why(tmp_path):
    root = paired_folder(tmp_path / "d", shapes=[(64, 64)], controls=())
    with pytest.raises(DatasetError, match=r"No image in .* has its control images .*img0.png \(no control"):
        load_image_folder(root, 64, pairs=PairConfig())
    with pytest.raises(DatasetError, match="Control folder not found"):
        load_image_folder(root, 64, pairs=PairConfig(folder=tmp_path / "nowhere"))


def test_a_control_of_another_aspect_is_refused_unless_it_has_its_own_bucket(tmp_path):
    root = paired_folder(tmp_path / "d", shapes=[(64, 64), (96, 64)])
    save(root / "control" / "img1.png", np.zeros((96, 96, 3), np.uint8))  # square control for a 3:2 target
    with pytest.raises(DatasetError, match=r"1 control of another aspect than its image: control/img1.png is 96x96 "
                                           r"but img1.png is 96x64.*control_resolution"):
        load_image_folder(root, 64, buckets=BUCKETS, pairs=PairConfig())
    ds = load_image_folder(root, 64, buckets=BUCKETS, pairs=PairConfig(resolution=48))
    data, _ = build(ds)
    shapes = {i.item.path.name: (tuple(i.latent.shape), tuple(i.references[0].shape)) for i in data.infos}
    # targets in their buckets of about 64² pixels (square; 3:2 -> 80x48); both controls, square, in 48x48
    assert shapes == {"img0.png": ((4, 8, 8), (1, 4, 6, 6)), "img1.png": ((4, 6, 10), (1, 4, 6, 6))}
    assert "each in a bucket of its own of about 48x48 pixels" in ds.summary()


def test_a_smaller_control_of_the_same_aspect_is_fitted_to_its_targets_bucket(tmp_path):
    root = paired_folder(tmp_path / "d", shapes=[(96, 64)])
    save(root / "control" / "img0.png", np.zeros((32, 48, 3), np.uint8))  # 48x32: half size
    data, _ = build(load_image_folder(root, 64, buckets=BUCKETS, pairs=PairConfig()))
    assert data.infos[0].references[0].shape[1:] == (4, *data.infos[0].latent.shape[1:])


def test_control_latents_are_cached_under_their_own_bytes(tmp_path):
    root = paired_folder(tmp_path / "d")
    cache_dir = tmp_path / "cache"
    ds = load_image_folder(root, 64, buckets=BUCKETS, pairs=PairConfig())
    _, cache = build(ds, folder=cache_dir)
    assert cache.stats["latents"].encoded == 2 * len(SHAPES)
    before = dataset_fingerprint(ds)
    save(root / "control" / "img1.png", np.full((96, 64, 3), 7, np.uint8))  # one control edited
    fake = FakeEncoders()
    ds = load_image_folder(root, 64, buckets=BUCKETS, pairs=PairConfig())
    data, cache = build(ds, fake=fake, folder=cache_dir)
    assert cache.stats["latents"].encoded == 1 and len(fake.pixel_calls) == 1  # only that control
    assert float(fake.pixel_calls[0].max()) == pytest.approx(7 / 255)
    assert dataset_fingerprint(ds) != before


def test_unpaired_datasets_keep_their_outputs(tmp_path):
    """Without pairs a control/ folder is just a folder (ignored with the warning it always had), and nothing in the
    metadata or fingerprint mentions pairs."""
    root = paired_folder(tmp_path / "d")
    plain = load_image_folder(root, 64, buckets=BUCKETS)
    assert any("Ignored folder control/" in w for w in plain.warnings)
    assert "lora_lab_pairs" not in dataset_metadata(plain) and "pairs:" not in plain.summary()
    data, _ = build(plain)
    assert all(i.references == () for i in data.infos)
    paired = load_image_folder(root, 64, buckets=BUCKETS, pairs=PairConfig())
    assert dataset_fingerprint(paired) != dataset_fingerprint(plain)
    assert '"references": [1]' in dataset_metadata(paired)["lora_lab_pairs"]


def test_an_undecodable_control_skips_its_pair_at_encoding(tmp_path):
    root = paired_folder(tmp_path / "d", shapes=[(64, 64)] * 3)
    ds = load_image_folder(root, 64, buckets=BUCKETS, pairs=PairConfig())
    shutil.copy(root / "img0.txt", root / "control" / "img2.png")  # not an image any more, after loading
    data, _ = build(ds)
    assert len(data.samples) == 2
    assert any("img2.png (cannot decode its control img2.png" in w for w in data.warnings), data.warnings
