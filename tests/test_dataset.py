"""load_image_folder and its helpers: layout, captions, trigger words, image modes, bad input."""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_lab.lora_core.data.captions import read_caption, tag_counts, with_trigger
from lora_lab.lora_core.data.dataset import ImageDataset, TrainImage, load_image_folder, parse_resolution
from lora_lab.lora_core.errors import DatasetError, LoraLabError
from lora_lab.lora_core.data.image_io import decode_rgb, pil_to_float_rgb, resize_and_crop

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_dataset"


def solid(path: Path, color=(255, 0, 0), size=(16, 16), mode="RGB", **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save_args)
    return path


def caption(image_path: Path, text: str | bytes, ext: str = ".txt") -> Path:
    path = image_path.with_suffix(ext)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def only_warning(dataset: ImageDataset, needle: str) -> str:
    matches = [w for w in dataset.warnings if needle in w]
    assert len(matches) == 1, dataset.warnings
    return matches[0]


# ---- layout, order, repeats -------------------------------------------------------------------------

def test_flat_folder_sorted_shapes_captions(tmp_path):
    caption(solid(tmp_path / "b.png", (0, 255, 0)), "green square")
    caption(solid(tmp_path / "a.jpg", (255, 0, 0)), "red square")
    caption(solid(tmp_path / "c.webp", (0, 0, 255), lossless=True), "blue square")
    caption(solid(tmp_path / "d.jpeg"), "jpeg square")

    ds = load_image_folder(tmp_path, 16)

    assert [i.path.name for i in ds.images] == ["a.jpg", "b.png", "c.webp", "d.jpeg"]
    assert [i.caption for i in ds.images] == ["red square", "green square", "blue square", "jpeg square"]
    assert [i.repeats for i in ds.images] == [1, 1, 1, 1]
    assert ds.warnings == []
    assert ds.resolution == (16, 16) and len(ds) == 4 and ds.root == tmp_path
    for image in ds.images:
        assert isinstance(image, TrainImage)
        assert image.pixels.shape == (16, 16, 3) and image.pixels.dtype == torch.float32
        assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    assert torch.equal(ds.images[1].pixels, torch.tensor([0.0, 1.0, 0.0]).expand(16, 16, 3))
    assert torch.equal(ds.images[2].pixels, torch.tensor([0.0, 0.0, 1.0]).expand(16, 16, 3))


def test_repeat_folders_expanded_and_tag_frequency(tmp_path):
    caption(solid(tmp_path / "root.png"), "mychar, red")
    caption(solid(tmp_path / "10_mychar" / "b.png"), "mychar, blue, blue")
    caption(solid(tmp_path / "10_mychar" / "a.png"), "mychar, red")
    caption(solid(tmp_path / "3_style" / "s.jpg"), "style")
    solid(tmp_path / "10_mychar" / "deeper" / "ignored.png")
    solid(tmp_path / "not_repeats" / "ignored.png")
    solid(tmp_path / "0_none" / "ignored.png")

    ds = load_image_folder(tmp_path, 8)

    assert [(i.path.relative_to(tmp_path).as_posix(), i.repeats) for i in ds.images] == [
        ("root.png", 1), ("10_mychar/a.png", 10), ("10_mychar/b.png", 10), ("3_style/s.jpg", 3)]
    expanded = ds.expanded()
    assert len(expanded) == 1 + 10 + 10 + 3 and len(ds) == 4
    assert [i.path.name for i in expanded[:12]] == ["root.png"] + ["a.png"] * 10 + ["b.png"]
    assert ds.tag_frequency() == {
        tmp_path.name: {"mychar": 1, "red": 1},
        "10_mychar": {"mychar": 2, "red": 1, "blue": 2},
        "3_style": {"style": 1},
    }
    assert "not_repeats/" in only_warning(ds, "not a kohya-style")
    assert "0_none/" in only_warning(ds, "0 repeats")
    assert "deeper" in only_warning(ds, "only one level")
    assert not any("ignored.png" in w for w in ds.warnings)


def test_order_is_deterministic_not_creation_order(tmp_path):
    for name in ["z.png", "m.png", "a.png", "k.jpg"]:
        solid(tmp_path / name)
    first = [i.path.name for i in load_image_folder(tmp_path, 8).images]
    second = [i.path.name for i in load_image_folder(tmp_path, 8).images]
    assert first == second == ["a.png", "k.jpg", "m.png", "z.png"]


def test_hidden_files_orphan_captions_and_other_files_are_ignored_silently(tmp_path):
    caption(solid(tmp_path / "a.png"), "kept")
    (tmp_path / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / "._a.png").write_bytes(b"macos resource fork")
    solid(tmp_path / ".5_cache" / "x.png")
    (tmp_path / "orphan.txt").write_text("caption with no image")
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "a.npz").write_bytes(b"\0")

    ds = load_image_folder(tmp_path, 8)

    assert [i.path.name for i in ds.images] == ["a.png"]
    assert ds.warnings == []


def test_uppercase_extension_and_custom_caption_extension(tmp_path):
    img = solid(tmp_path / "A.PNG")
    caption(img, "from .caption", ext=".caption")
    caption(img, "from .txt")
    assert load_image_folder(tmp_path, 8, caption_extension=".caption").images[0].caption == "from .caption"
    assert load_image_folder(tmp_path, 8, caption_extension="caption").images[0].caption == "from .caption"
    assert load_image_folder(tmp_path, 8).images[0].caption == "from .txt"


@pytest.mark.parametrize("extension", ["/../../secret.txt", "..\\secret.txt", ".txt/../../x", "C:x.txt"])
def test_a_caption_extension_never_reaches_outside_the_dataset(tmp_path, extension):
    from lora_lab.lora_core.errors import DatasetError

    data = tmp_path / "data"
    data.mkdir()
    solid(data / "a.png")
    (tmp_path / "secret.txt").write_text("not a caption")
    with pytest.raises(DatasetError, match="caption_extension .* is not a file-name ending"):
        load_image_folder(data, 8, caption_extension=extension)


# ---- captions and trigger words -------------------------------------------------------------------------

@pytest.mark.parametrize("text, trigger, expected", [
    ("a red circle", "rcircle", "rcircle, a red circle"),
    ("rcircle, a red circle", "rcircle", "rcircle, a red circle"),
    ("RCircle sitting on a bench", "rcircle", "RCircle sitting on a bench"),
    ("rcircles are round", "rcircle", "rcircle, rcircles are round"),
    ("a red circle", "  ", "a red circle"),
    ("", "rcircle", "rcircle"),
    ("a.b style", "a.b", "a.b style"),
])
def test_with_trigger(text, trigger, expected):
    assert with_trigger(text, trigger) == expected


def test_trigger_applied_in_dataset_without_duplication(tmp_path):
    caption(solid(tmp_path / "a.png"), "a photo")
    caption(solid(tmp_path / "b.png"), "ohwx, already there")
    ds = load_image_folder(tmp_path, 8, trigger_word=" ohwx ")
    assert [i.caption for i in ds.images] == ["ohwx, a photo", "ohwx, already there"]
    assert ds.trigger_word == "ohwx"


def test_caption_whitespace_newlines_bom_and_latin1(tmp_path):
    caption(solid(tmp_path / "a.png"), "  a cat,\n\n  sitting\r\non a mat \t\n")
    caption(solid(tmp_path / "b.png"), "\ufeffcafé au lait\n")
    latin1 = caption(solid(tmp_path / "c.png"), "caf\xe9 cr\xe8me".encode("latin-1"))

    ds = load_image_folder(tmp_path, 8)

    assert [i.caption for i in ds.images] == ["a cat, sitting on a mat", "café au lait", "café crème"]
    assert only_warning(ds, "latin-1").endswith(": c.txt")
    assert read_caption(latin1) == ("café crème", True)


def test_missing_and_empty_captions_get_default_and_a_warning_naming_them(tmp_path):
    caption(solid(tmp_path / "has.png"), "captioned")
    solid(tmp_path / "none.png")
    caption(solid(tmp_path / "2_sub" / "empty.png"), " \n\n ")

    ds = load_image_folder(tmp_path, 8, trigger_word="tok", default_caption="a photo")

    assert [i.caption for i in ds.images] == ["tok, captioned", "tok, a photo", "tok, a photo"]
    warning = only_warning(ds, "no caption")
    assert "none.png" in warning and "2_sub/empty.png" in warning and "has.png" not in warning
    assert "'tok, a photo'" in warning
    assert len(ds.warnings) == 1


def test_missing_caption_without_default_uses_trigger_alone(tmp_path):
    solid(tmp_path / "a.png")
    assert load_image_folder(tmp_path, 8, trigger_word="tok").images[0].caption == "tok"
    assert load_image_folder(tmp_path, 8).images[0].caption == ""


def test_tag_counts_kohya_style():
    assert tag_counts(["a, b , ,b", "b,c"]) == {"a": 1, "b": 3, "c": 1}


# ---- bad folders ------------------------------------------------------------------------------------

def test_missing_folder_error_names_path_and_extensions(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as err:
        load_image_folder(missing, 512)
    assert str(missing) in str(err.value) and ".png" in str(err.value) and ".webp" in str(err.value)
    assert isinstance(err.value, LoraLabError)


@pytest.mark.parametrize("setup", ["empty", "captions_only", "only_ignored_folder"])
def test_folder_without_images_error(tmp_path, setup):
    if setup == "captions_only":
        (tmp_path / "a.txt").write_text("caption")
    if setup == "only_ignored_folder":
        solid(tmp_path / "misc" / "a.png")
    with pytest.raises(DatasetError, match="No training images") as err:
        load_image_folder(tmp_path, 512)
    message = str(err.value)
    assert str(tmp_path) in message
    assert all(ext in message for ext in (".png", ".jpg", ".jpeg", ".webp"))


def test_path_is_a_file_error(tmp_path):
    file = solid(tmp_path / "a.png")
    with pytest.raises(DatasetError, match="not a folder") as err:
        load_image_folder(file, 512)
    assert str(file) in str(err.value)


def truncated_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def test_corrupt_and_truncated_images_are_skipped_and_named(tmp_path):
    caption(solid(tmp_path / "good.png"), "fine")
    (tmp_path / "random.png").write_bytes(random.Random(0).randbytes(2048))
    truncated_png(tmp_path / "2_x" / "half.png")
    (tmp_path / "empty.jpg").write_bytes(b"")

    ds = load_image_folder(tmp_path, 8)

    assert [i.path.name for i in ds.images] == ["good.png"]
    warning = only_warning(ds, "unreadable")
    assert warning.startswith("Skipped 3 unreadable images")
    assert "random.png" in warning and "2_x/half.png" in warning and "empty.jpg" in warning
    assert "good.png" not in warning


def test_all_images_unreadable_error_lists_them(tmp_path):
    (tmp_path / "random.png").write_bytes(random.Random(1).randbytes(512))
    truncated_png(tmp_path / "half.png")
    with pytest.raises(DatasetError, match="None of the 2 images") as err:
        load_image_folder(tmp_path, 8)
    assert "random.png" in str(err.value) and "half.png" in str(err.value) and str(tmp_path) in str(err.value)


def test_long_name_lists_are_shortened(tmp_path):
    for k in range(25):
        solid(tmp_path / f"img{k:02d}.png")
    warning = only_warning(load_image_folder(tmp_path, 8), "no caption")
    assert "img19.png" in warning and "img20.png" not in warning and "and 5 more" in warning


# ---- resolution ---------------------------------------------------------------------------------------

def test_parse_resolution_valid():
    assert parse_resolution(512) == (512, 512)
    assert parse_resolution((768, 512)) == (768, 512)
    assert parse_resolution([8, 16]) == (8, 16)


@pytest.mark.parametrize("value, culprit, suggestion", [
    (500, "500", "512"), (1020, "1020", "1024"), ((512, 700), "height 700", "704"), (4, "4", "64"),
    (0, "0", "64"), (-8, "-8", "64"),
])
def test_parse_resolution_rejects_non_multiples_of_8(value, culprit, suggestion):
    with pytest.raises(DatasetError) as err:
        parse_resolution(value)
    assert culprit in str(err.value) and f"try {suggestion}" in str(err.value)


@pytest.mark.parametrize("value", ["512", 512.0, True, (512,), (512, 512, 3), (512, "a")])
def test_parse_resolution_rejects_non_integers(value):
    with pytest.raises(DatasetError):
        parse_resolution(value)


def test_bad_resolution_raises_before_touching_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="500"):
        load_image_folder(tmp_path / "missing", 500)


# ---- resize and crop ----------------------------------------------------------------------------------

def test_tall_image_resized_by_shorter_side_and_center_cropped(tmp_path):
    bands = np.zeros((60, 20, 3), np.uint8)
    bands[:20, :, 0], bands[20:40, :, 1], bands[40:, :, 2] = 255, 255, 255  # red / green / blue thirds
    Image.fromarray(bands).save(tmp_path / "tall.png")

    pixels = load_image_folder(tmp_path, 16).images[0].pixels  # 20x60 -> 16x48 -> rows 16..32 kept

    assert pixels.shape == (16, 16, 3)
    inner = pixels[3:13]
    assert torch.allclose(inner, torch.tensor([0.0, 1.0, 0.0]).expand_as(inner), atol=0.02)


def test_non_square_resolution_is_width_height(tmp_path):
    solid(tmp_path / "a.png", size=(40, 40))
    ds = load_image_folder(tmp_path, (16, 8))
    assert ds.resolution == (16, 8) and ds.images[0].pixels.shape == (8, 16, 3)


def test_upscale_of_sharp_pattern_stays_in_unit_range():
    checker = (np.indices((8, 8)).sum(axis=0) % 2).astype(np.float32)
    rgb = np.repeat(checker[..., None], 3, axis=2)
    out = resize_and_crop(rgb, (32, 32))
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0  # bicubic overshoot clipped, extremes still reached


def test_same_size_is_untouched():
    rgb = np.random.default_rng(0).random((8, 16, 3), dtype=np.float32)
    assert np.array_equal(resize_and_crop(rgb, (16, 8)), rgb)


# ---- image modes ---------------------------------------------------------------------------------------

def decoded(tmp_path: Path, image: Image.Image, name: str = "x.png", **save_args) -> np.ndarray:
    image.save(tmp_path / name, **save_args)
    return decode_rgb(tmp_path / name)


def test_rgba_composited_onto_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 51)])
    px = decoded(tmp_path, rgba)[0]
    np.testing.assert_allclose(px[0], [1, 0, 0])
    np.testing.assert_allclose(px[1], [1, 1, 1])
    np.testing.assert_allclose(px[2], [0.8, 0.8, 0.8], atol=1e-6)  # black at alpha 0.2 over white


def test_la_and_l_and_1(tmp_path):
    np.testing.assert_allclose(decoded(tmp_path, Image.new("LA", (2, 2), (0, 0)))[0, 0], [1, 1, 1])
    np.testing.assert_allclose(decoded(tmp_path, Image.new("LA", (2, 2), (51, 255)))[0, 0], [0.2, 0.2, 0.2],
                               atol=1e-6)
    np.testing.assert_allclose(decoded(tmp_path, Image.new("L", (2, 2), 51))[0, 0], [0.2, 0.2, 0.2], atol=1e-6)
    np.testing.assert_allclose(decoded(tmp_path, Image.new("1", (2, 2), 1))[0, 0], [1, 1, 1])


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 255, 0, 0] + [0] * (254 * 3))
    palette.putdata([0, 1])
    np.testing.assert_allclose(decoded(tmp_path, palette, "p.png"), [[[0, 0, 1], [1, 0, 0]]])
    palette.info["transparency"] = 0
    np.testing.assert_allclose(decoded(tmp_path, palette, "pt.png"), [[[1, 1, 1], [1, 0, 0]]])


def test_cmyk_jpeg(tmp_path):
    px = decoded(tmp_path, Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "c.jpg", quality=95)
    assert px.shape == (16, 16, 3)
    np.testing.assert_allclose(px[8, 8], [1, 0, 0], atol=0.03)


def test_16bit_png_divided_by_65535_keeps_precision(tmp_path):
    values = np.array([[0, 1000, 1001, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    px = decoded(tmp_path, image, "g16.png")
    np.testing.assert_allclose(px[0, :, 0], values[0] / 65535.0, rtol=1e-6)
    assert px[0, 2, 0] > px[0, 1, 0]  # 1000 and 1001 stay distinct (no 8-bit round trip)
    np.testing.assert_array_equal(px[..., 0], px[..., 2])


def test_16bit_png_through_dataset_resize_stays_in_range(tmp_path):
    ramp = (np.linspace(0, 65535, 40 * 24).reshape(24, 40)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    pixels = load_image_folder(tmp_path, 16).images[0].pixels
    assert pixels.shape == (16, 16, 3) and 0.0 <= pixels.min() < 0.2 and 0.8 < pixels.max() <= 1.0


def test_int32_and_float_modes():
    np.testing.assert_allclose(pil_to_float_rgb(Image.new("I", (1, 1), 65535)), [[[1, 1, 1]]])
    np.testing.assert_allclose(pil_to_float_rgb(Image.new("I", (1, 1), 70000)), [[[1, 1, 1]]])  # clipped
    np.testing.assert_allclose(pil_to_float_rgb(Image.new("F", (1, 1), 0.25)), [[[0.25] * 3]])
    np.testing.assert_allclose(pil_to_float_rgb(Image.new("F", (1, 1), 51.0)), [[[0.2] * 3]], atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20, 0] = 255  # left half red
    stored[:, 20:, 1] = 255  # right half green
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: left half becomes the top
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)

    pixels = load_image_folder(tmp_path, (16, 32)).images[0].pixels  # upright is 20 wide x 40 tall

    assert pixels.shape == (32, 16, 3)
    np.testing.assert_allclose(pixels[8, 8].numpy(), [1, 0, 0], atol=0.08)
    np.testing.assert_allclose(pixels[24, 8].numpy(), [0, 1, 0], atol=0.08)


def test_mixed_sizes_and_modes_in_one_folder(tmp_path):
    solid(tmp_path / "a.png", (10, 20, 30, 0), size=(30, 50), mode="RGBA")
    solid(tmp_path / "b.jpg", 128, size=(70, 20), mode="L")
    Image.fromarray(np.full((9, 13), 30000, np.uint16)).save(tmp_path / "c.png")
    solid(tmp_path / "d.webp", (0, 0, 255), size=(64, 64), lossless=True)
    ds = load_image_folder(tmp_path, 24)
    assert len(ds) == 4
    assert all(i.pixels.shape == (24, 24, 3) and i.pixels.dtype == torch.float32 for i in ds.images)
    assert torch.allclose(ds.images[0].pixels, torch.ones(24, 24, 3))
    assert torch.allclose(ds.images[2].pixels, torch.full((24, 24, 3), 30000 / 65535), atol=1e-5)


# ---- summary and the bundled example ------------------------------------------------------------------

def test_summary_mentions_counts_and_warnings(tmp_path):
    caption(solid(tmp_path / "a.png"), "x")
    solid(tmp_path / "4_more" / "b.png")
    ds = load_image_folder(tmp_path, 8)
    text = ds.summary()
    assert "2 images, 5 samples per epoch at 8x8" in text
    assert "4_more: 1 image x 4 repeats" in text
    assert "1 warning:" in text and "4_more/b.png" in text


def test_bundled_tiny_dataset():
    ds = load_image_folder(EXAMPLE, 64, trigger_word="rcircle")
    assert len(ds) == 7 and len(ds.expanded()) == 8 and ds.warnings == []
    assert {i.path.suffix for i in ds.images} == {".png", ".jpg"}
    assert [i.repeats for i in ds.images] == [1] * 6 + [2]
    assert all(i.caption.startswith("rcircle, a ") and "red circle" in i.caption for i in ds.images)
    size = sum(f.stat().st_size for f in EXAMPLE.rglob("*") if f.is_file())
    assert size < 100_000


def test_bundled_tiny_dataset_matches_its_generator(tmp_path, monkeypatch):
    import importlib.util
    script = EXAMPLE.parent / "make_tiny_dataset.py"
    spec = importlib.util.spec_from_file_location("make_tiny_dataset", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path)
    module.main()

    committed = sorted(p.relative_to(EXAMPLE) for p in EXAMPLE.rglob("*") if p.is_file())
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == committed
    for rel in committed:
        if rel.suffix == ".txt":
            assert (tmp_path / rel).read_text() == (EXAMPLE / rel).read_text()
        else:  # compare pixels, not bytes: encoders may differ between Pillow builds
            new, old = decode_rgb(tmp_path / rel), decode_rgb(EXAMPLE / rel)
            assert np.abs(new - old).max() <= (0.0 if rel.suffix == ".png" else 4 / 255)


def test_dataset_never_writes_into_the_folder(tmp_path):
    caption(solid(tmp_path / "a.png"), "x")
    (tmp_path / "bad.png").write_bytes(b"junk")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    load_image_folder(tmp_path, 8)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before



def test_unlistable_folder_is_a_dataset_error(tmp_path, monkeypatch):
    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)  # chmod 0 does not stop root, so simulate it
    with pytest.raises(DatasetError, match="Cannot list") as err:
        load_image_folder(tmp_path, 8)
    assert str(tmp_path) in str(err.value) and "Permission denied" in str(err.value)
