"""Caption templates, per-folder default captions, caption extensions, and the per-step transforms
(dropout, tag dropout, shuffling with kept tokens) drawn from the run's generator."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_lab.lora_core.data.caption_transforms import CaptionTransforms, StepCaption, without_separator
from lora_lab.lora_core.data.captions import apply_template
from lora_lab.lora_core.data.dataset import load_image_folder
from lora_lab.lora_core.errors import DatasetError


def solid(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path)
    return path


@pytest.mark.parametrize("template, caption, trigger, expected", [
    ("{trigger}, {caption}", "a cat", "ohwx", "ohwx, a cat"),
    ("{trigger}, {caption}", "a cat", "", "a cat"),
    ("{caption}, {trigger} style", "a cat", "ohwx", "a cat, ohwx style"),
    ("photo of {trigger}, {caption}.", "", "ohwx", "photo of ohwx."),
    ("a photo of {trigger}", "ignored caption", "ohwx", "a photo of ohwx"),
    ("", "a cat", "ohwx", "ohwx, a cat"),  # no template: the trigger is prepended once
    ("", "ohwx, a cat", "ohwx", "ohwx, a cat"),
])
def test_template(template, caption, trigger, expected):
    assert apply_template(template, caption, trigger) == expected


def test_template_with_unknown_field_is_an_error_naming_it(tmp_path):
    solid(tmp_path / "a.png")
    with pytest.raises(DatasetError, match=r"\{name\}"):
        load_image_folder(tmp_path, 16, caption_template="{trigger} {name}")


def test_dataset_applies_template_and_per_folder_default_caption(tmp_path):
    solid(tmp_path / "a.png")
    (tmp_path / "a.caption").write_text("own caption")
    solid(tmp_path / "b.png")  # no caption: the dataset default
    solid(tmp_path / "5_dogs" / "c.png")  # no caption: its folder's default
    solid(tmp_path / "5_dogs" / "d.png")
    (tmp_path / "5_dogs" / "d.caption").write_text("a dog running")
    (tmp_path / "5_dogs" / "default_caption.caption").write_text("a dog")

    ds = load_image_folder(tmp_path, 16, trigger_word="ohwx", default_caption="a thing", caption_extension="caption",
                           caption_template="photo of {trigger}, {caption}")

    assert {i.path.name: i.caption for i in ds.images} == {
        "a.png": "photo of ohwx, own caption", "b.png": "photo of ohwx, a thing",
        "c.png": "photo of ohwx, a dog", "d.png": "photo of ohwx, a dog running"}
    warning = next(w for w in ds.warnings if "no caption" in w)
    assert "b.png" in warning and "c.png" not in warning  # the folder default is a caption, not a fallback


def test_transforms_off_change_nothing_and_draw_nothing():
    t = CaptionTransforms()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert not t.active
    assert t.apply("a, b, c", g) == "a, b, c"
    assert torch.equal(g.get_state(), state)


def test_dropout_frequency_and_determinism():
    t = CaptionTransforms(dropout=0.25)
    g = torch.Generator().manual_seed(1)
    out = [t.apply("ohwx, a cat", g) for _ in range(4000)]
    assert set(out) == {"", "ohwx, a cat"}
    assert abs(out.count("") / len(out) - 0.25) < 0.03
    g = torch.Generator().manual_seed(1)
    assert [t.apply("ohwx, a cat", g) for _ in range(4000)] == out


def test_shuffle_keeps_the_first_tokens_and_every_tag():
    t = CaptionTransforms(shuffle=True, keep_tokens=2)
    g = torch.Generator().manual_seed(0)
    caption = "ohwx, person, red hat, blue coat, smiling, outdoors"
    seen = Counter()
    for _ in range(300):
        out = t.apply(caption, g).split(", ")
        assert out[:2] == ["ohwx", "person"]
        assert sorted(out) == sorted(caption.split(", "))
        seen[out[2]] += 1
    assert set(seen) == {"red hat", "blue coat", "smiling", "outdoors"}  # every movable tag gets to go first


def test_keep_separator_and_tag_dropout():
    t = CaptionTransforms(shuffle=True, tag_dropout=0.5, keep_separator="|||")
    g = torch.Generator().manual_seed(0)
    lengths = set()
    for _ in range(200):
        out = t.apply("ohwx, a portrait ||| red hat, blue coat, smiling", g).split(", ")
        assert out[:2] == ["ohwx", "a portrait"] and "|||" not in ", ".join(out)
        assert set(out[2:]) <= {"red hat", "blue coat", "smiling"}
        lengths.add(len(out))
    assert lengths == {2, 3, 4, 5}
    assert without_separator("ohwx, a portrait ||| red hat", "|||") == "ohwx, a portrait, red hat"


@pytest.mark.parametrize("kwargs", [{"dropout": 1.5}, {"tag_dropout": -0.1}, {"keep_tokens": -1}])
def test_bad_transform_values(kwargs):
    with pytest.raises(DatasetError):
        CaptionTransforms(**kwargs)


def test_step_caption_encodes_the_drawn_text():
    encoded = []
    step = StepCaption("a, b, c", CaptionTransforms(shuffle=True), lambda text: encoded.append(text) or text.upper())
    g = torch.Generator().manual_seed(3)
    outs = [step.draw(g) for _ in range(20)]
    assert [o.lower() for o in outs] == encoded
    assert all(sorted(o.split(", ")) == ["A", "B", "C"] for o in outs)
