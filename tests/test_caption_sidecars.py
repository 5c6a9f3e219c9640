"""Caption sidecars: the images of a dataset folder as Load Training Images reads them, new captions written only
where none exists (never replacing one, not even one written meanwhile), overwrite when asked, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_lab.lora_core.data.caption_sidecars import (dataset_images, final_caption, named_images, write_new,
                                                      write_sidecars)
from lora_lab.lora_core.data.dataset import load_image_folder
from lora_lab.lora_core.errors import DatasetError


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "set"
    for name in ("a.png", "b.jpg", "5_dog/c.png", "5_dog/d.webp"):
        image(root / name)
    (root / "a.txt").write_text("an existing caption")
    (root / "5_dog" / "d.txt").write_text("another one")
    (root / "notes.md").write_text("not an image")
    return root


def test_images_in_the_loaders_order_with_their_sidecars(folder):
    images = dataset_images(folder)
    assert [p.path.relative_to(folder).as_posix() for p in images] == ["a.png", "b.jpg", "5_dog/c.png", "5_dog/d.webp"]
    assert [p.captioned for p in images] == [True, False, False, True]
    loader = load_image_folder(folder, 64)
    assert [i.path for i in loader.images] == [p.path for p in images]


def test_only_uncaptioned_images_get_a_caption_and_none_is_replaced(folder):
    images = dataset_images(folder)
    report = write_sidecars(folder, images, ["x", "new b", "new c", "y"])
    assert report.written == ["b.txt", "5_dog/c.txt"] and report.kept == ["a.txt", "5_dog/d.txt"]
    assert (folder / "a.txt").read_text() == "an existing caption" and (folder / "b.txt").read_text() == "new b"
    assert (folder / "5_dog" / "d.txt").read_text() == "another one"
    assert "wrote 2 new captions, kept 2 existing captions" in report.text(folder)
    again = write_sidecars(folder, images, ["1", "2", "3", "4"])
    assert again.written == [] and (folder / "b.txt").read_text() == "new b"
    replaced = write_sidecars(folder, images, ["1", "2", "", "4"], overwrite=True)
    assert replaced.replaced == ["a.txt", "b.txt", "5_dog/d.txt"] and replaced.empty == ["5_dog/c.png"]
    assert (folder / "a.txt").read_text() == "1" and (folder / "5_dog" / "c.txt").read_text() == "new c"
    assert not [p for p in folder.rglob("*.tmp")]  # no temp file left behind


def test_a_caption_written_after_listing_is_never_replaced(folder):
    images = dataset_images(folder)
    (folder / "b.txt").write_text("written by someone else meanwhile")
    report = write_sidecars(folder, images, ["", "generated", "", ""])
    assert report.kept == ["b.txt"] and (folder / "b.txt").read_text() == "written by someone else meanwhile"
    assert write_new(folder / "z.txt", b"z") and not write_new(folder / "z.txt", b"other")
    assert (folder / "z.txt").read_bytes() == b"z"


def test_named_images_stay_inside_the_folder(folder, tmp_path):
    assert [i.path.name for i in named_images(folder, ["5_dog/c.png", "a.png"])] == ["c.png", "a.png"]
    image(tmp_path / "outside.png")
    for bad in ("../outside.png", str(tmp_path / "outside.png"), "notes.md", "missing.png"):
        with pytest.raises(DatasetError, match="Not images inside"):
            named_images(folder, [bad])
    os.symlink(tmp_path / "outside.png", folder / "link.png")
    with pytest.raises(DatasetError, match="link.png"):
        named_images(folder, ["link.png"])


def test_caption_count_must_match_and_text_is_tidied():
    with pytest.raises(DatasetError, match="2 captions for 1 image"):
        write_sidecars(Path("."), [object()], ["a", "b"])
    assert final_caption("  a dog\n on grass ", "sks") == "sks, a dog on grass"
    assert final_caption("a dog", "sks", "photo of {trigger}: {caption}") == "photo of sks: a dog"
    assert final_caption("   ", "sks") == ""
