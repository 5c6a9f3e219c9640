"""Caption Images and Save Captions in a real ComfyUI (in this process).

Where ComfyUI has text generation (comfy_extras/nodes_textgen.py, August 2026), Caption Images runs a random small
vision-language text encoder of a real architecture (test_nodes/vision_clip.py: ComfyUI's Qwen3-VL classes)
through TextGenerate's machinery: captions are written beside the uncaptioned images only, the same seed gives the
same captions, another seed other ones, an existing caption is never replaced unless overwrite is on. Where it
has none (January 2026), the node says so. Save Captions pairs a STRING list with the folder's images by name or
in the order ComfyUI's own folder loader reads them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .comfy_env import comfyui_path
from .comfy_inprocess import call_node

HAS_TEXT_GENERATION = comfyui_path() is not None and (comfyui_path() / "comfy_extras" / "nodes_textgen.py").exists()
needs_text_generation = pytest.mark.skipif(not HAS_TEXT_GENERATION, reason="this ComfyUI has no TextGenerate")
CAPTION = dict(prompt="Describe this image.", trigger_word="sks", caption_template="", overwrite=False,
               caption_extension=".txt", max_length=6, sampling="on", temperature=0.7, seed=3, max_side=64)


def pictures(folder: Path, n: int = 3, captioned: tuple[int, ...] = (0,)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
        if i in captioned:
            (folder / f"p{i}.txt").write_text("my own caption")
    return folder


@pytest.fixture(scope="module")
def vision_clip(comfy):
    from .comfy_inprocess import register_lora_lab_nodes
    from .test_nodes.vision_clip import tiny_vision_clip

    register_lora_lab_nodes()
    return tiny_vision_clip()


def caption(clip, folder: Path, **inputs):
    return call_node("LoraLabCaptionImages", clip=clip, folder=str(folder), **{**CAPTION, **inputs})


def sidecars(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.txt"))}


@needs_text_generation
def test_captions_only_the_uncaptioned_images_deterministically_and_never_replaces(vision_clip, tmp_path):
    first = pictures(tmp_path / "first")
    report, captions, names = caption(vision_clip, first)
    written = sidecars(first)
    print(report, written, sep="\n")
    assert names == ["p1.png", "p2.png"] and len(captions) == 2
    assert set(written) == {"p0.txt", "p1.txt", "p2.txt"} and written["p0.txt"] == "my own caption"
    assert [written["p1.txt"], written["p2.txt"]] == captions and all(c.startswith("sks, ") for c in captions)
    assert "wrote 2 new captions, kept 1 existing caption" in report

    second = pictures(tmp_path / "second")  # the same pictures: the same seed writes the same captions
    caption(vision_clip, second)
    assert sidecars(second) == written
    third = pictures(tmp_path / "third")
    caption(vision_clip, third, seed=4)
    assert sidecars(third)["p0.txt"] == "my own caption" and sidecars(third) != written

    again, captions_again, _ = caption(vision_clip, first, seed=4)  # everything captioned now: nothing to do
    assert captions_again == [] and sidecars(first) == written and "kept 3 existing captions" in again
    replaced, new, _ = caption(vision_clip, first, seed=4, overwrite=True)
    assert sidecars(first)["p0.txt"] == new[0] != "my own caption" and "replaced 3" in replaced


@needs_text_generation
def test_a_clip_that_cannot_see_images_is_named(sd15, tmp_path):
    _, clip, _ = sd15
    with pytest.raises(Exception, match="cannot caption images"):
        caption(clip, pictures(tmp_path / "set"))
    assert sidecars(tmp_path / "set") == {"p0.txt": "my own caption"}


@pytest.mark.skipif(HAS_TEXT_GENERATION, reason="this ComfyUI has TextGenerate")
def test_without_text_generation_caption_images_says_so(sd15, tmp_path):
    _, clip, _ = sd15
    with pytest.raises(Exception, match=r"needs ComfyUI's text generation \(the 'Generate Text' node"):
        caption(clip, pictures(tmp_path / "set"))
    assert sidecars(tmp_path / "set") == {"p0.txt": "my own caption"}


def save(folder: Path, captions: list[str], filenames=None, **inputs):
    single = dict(folder=str(folder), trigger_word="", caption_template="", overwrite=False, caption_extension=".txt")
    single.update(inputs)
    listed = {k: [v] for k, v in single.items()}
    if filenames is not None:
        listed["filenames"] = filenames
    return call_node("LoraLabSaveCaptions", captions=captions, **listed)[0]


def test_save_captions_by_name_and_in_comfyuis_folder_order(comfy, tmp_path):
    from .comfy_inprocess import register_lora_lab_nodes

    register_lora_lab_nodes()
    folder = pictures(tmp_path / "set")
    report = save(folder, ["one", "two"], filenames=["p2.png", "p0.png"], trigger_word="sks")
    assert sidecars(folder) == {"p0.txt": "my own caption", "p2.txt": "sks, one"}
    assert "wrote 1 new caption, kept 1 existing caption" in report

    fresh = pictures(tmp_path / "fresh", captioned=())
    order = [name for name in os.listdir(fresh) if name.endswith(".png")]  # how LoadImageDataSetFromFolder reads it
    save(fresh, [f"caption of {name}" for name in order])
    assert sidecars(fresh) == {name.replace(".png", ".txt"): f"caption of {name}" for name in order}
    with pytest.raises(Exception, match="2 captions for 3 images"):
        save(pictures(tmp_path / "short", captioned=()), ["a", "b"])
    with pytest.raises(Exception, match="outside the folders datasets may be read from"):
        save(Path("/"), ["a"])
