"""The dataset nodes in a real ComfyUI (in this process, no models): options nodes, the captions list,
buckets in the summary, re-running after an edit, the video node, the cache node, bad cache folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .comfy_inprocess import call_node, register_lora_lab_nodes


@pytest.fixture(scope="module")
def nodes_ready(comfy):
    register_lora_lab_nodes()


def images(folder: Path, shapes: list[tuple[int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(shapes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"caption {i}")
    return folder


def dataset_inputs(folder: Path, **overrides) -> dict:
    base = dict(folder=str(folder), resolution=64, aspect_buckets=True, trigger_word="ohwx", caption_template="",
                default_caption="", validation=0.0, cache_folder="")
    return {**base, **overrides}


def test_dataset_node_buckets_captions_and_options(nodes_ready, tmp_path):
    folder = images(tmp_path / "data", [(96, 64), (64, 96), (64, 64), (100, 66)])
    (buckets,) = call_node("LoraLabBucketOptions", min_bucket_side=32, max_bucket_side=128, bucket_step=16,
                           small_images="upscale")
    (captions_opts,) = call_node("LoraLabCaptionOptions", caption_extension=".txt", caption_dropout=0.1,
                                 tag_dropout=0.0, shuffle_tags=True, keep_tokens=1, keep_tokens_separator="")
    (augment,) = call_node("LoraLabAugmentation", flip=0.5, crop_jitter=0.0, brightness=0.0, contrast=0.0,
                           saturation=0.0, hue=0.0, variants=4, seed=0)
    dataset, summary, captions = call_node("LoraLabDataset", **dataset_inputs(folder, cache_folder=str(tmp_path / "cache"),
                                                                              validation=1.0, caption_template="{trigger} {caption}"),
                                           bucket_options=buckets, caption_options=captions_opts, augmentation=augment)
    assert captions == [f"ohwx caption {i}" for i in range(4) if i != int(dataset.validation[0].path.stem[3:])] + \
        [dataset.validation[0].caption]
    assert len(dataset.images) == 3 and dataset.caption_transforms.shuffle and dataset.augment.flip == 0.5
    assert "aspect buckets (base 64x64, sides 32-128 in steps of 16)" in summary
    assert f"cache: {tmp_path / 'cache'}" in summary and "validation: 1 image held out" in summary
    assert (tmp_path / "cache" / "CACHEDIR.TAG").is_file()


def test_dataset_node_runs_again_after_an_edit(nodes_ready, tmp_path):
    from lora_lab.nodes.dataset_node import LoadTrainingImages

    folder = images(tmp_path / "data", [(64, 64), (64, 64)])
    before = LoadTrainingImages.fingerprint_inputs(folder=str(folder))
    assert LoadTrainingImages.fingerprint_inputs(folder=str(folder)) == before
    path = folder / "img1.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert LoadTrainingImages.fingerprint_inputs(folder=str(folder)) != before


def test_unwritable_cache_folder_is_named_by_the_dataset_node(nodes_ready, tmp_path):
    folder = images(tmp_path / "data", [(64, 64)])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(Exception, match="not writable") as err:
        call_node("LoraLabDataset", **dataset_inputs(folder, cache_folder=str(blocker / "cache")))
    assert str(blocker / "cache") in str(err.value)


def test_video_node(nodes_ready, tmp_path):
    av = pytest.importorskip("av")
    folder = tmp_path / "videos"
    folder.mkdir()
    with av.open(str(folder / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (folder / "clip.txt").write_text("a clip")
    Image.new("RGB", (64, 48)).save(folder / "still.png")
    dataset, summary, captions = call_node(
        "LoraLabVideoDataset", folder=str(folder), resolution=48, frames=9, frame_sampling="chunk", target_fps=0.0,
        clips_per_video=1, aspect_buckets=False, include_images=True, short_videos="fewer_frames", trigger_word="",
        caption_template="", default_caption="a still", validation=0.0, cache_folder="")
    assert [c.frame_count for c in dataset.images] == [9, 9, 1]
    assert captions == ["a clip", "a clip", "a still"]
    assert "3 clips" in summary


def test_cache_node_reports_and_clears(nodes_ready, tmp_path):
    import torch

    from lora_lab.lora_core.cache.encoding_cache import EncodingCache, MemoryStore

    EncodingCache(tmp_path / "c", memory=MemoryStore()).get_or_encode("latents", "ab" * 20, lambda: torch.ones(10))
    (report,) = call_node("LoraLabCache", cache_folder=str(tmp_path / "c"), action="report")
    assert "1 file" in report and str(tmp_path / "c") in report
    (report,) = call_node("LoraLabCache", cache_folder=str(tmp_path / "c"), action="clear")
    assert report.startswith("Cleared") and not list((tmp_path / "c").rglob("*.safetensors"))
    (report,) = call_node("LoraLabCache", cache_folder="", action="report")
    assert "memory only" in report


def test_dataset_paths_are_checked_with_links_followed(nodes_ready, tmp_path, tmp_path_factory, monkeypatch):
    """Inside input/ (by name or absolute) is taken, a link out of it is refused, and folders the operator lists
    in $LORA_LAB_DATASET_ROOTS are offered as "name [datasets]" and taken; validate_inputs gives the same verdict."""
    import folder_paths

    from .comfy_inprocess import node_class

    LoadTrainingImages = node_class("LoraLabDataset")
    input_dir = Path(folder_paths.get_input_directory())
    inside = images(tmp_path / "inside", [(64, 64)])
    name = inside.relative_to(input_dir).as_posix()
    outside_root = Path(os.path.realpath(tmp_path_factory.getbasetemp())).parent / f"lora_lab_outside_{os.getpid()}"
    outside = images(outside_root / "data", [(64, 64)])
    try:
        for folder in (name, str(inside)):
            assert LoadTrainingImages.validate_inputs(folder=folder) is True
            assert len(call_node("LoraLabDataset", **dataset_inputs(folder))[0]) == 1
        link = tmp_path / "link_out"
        link.symlink_to(outside, target_is_directory=True)
        assert "outside the folders datasets may be read from" in LoadTrainingImages.validate_inputs(folder=str(link))
        with pytest.raises(Exception, match="folder .*link_out.* outside") as refused:
            call_node("LoraLabDataset", **dataset_inputs(link))
        assert type(refused.value).__name__ == "PathNotAllowed"
        assert f"{name}" in offered_folders()
        monkeypatch.setenv("LORA_LAB_DATASET_ROOTS", str(outside_root))
        assert "data [datasets]" in offered_folders()
        assert len(call_node("LoraLabDataset", **dataset_inputs("data [datasets]"))[0]) == 1
        assert len(call_node("LoraLabDataset", **dataset_inputs(outside))[0]) == 1
    finally:
        import shutil

        shutil.rmtree(outside_root, ignore_errors=True)


def offered_folders() -> list[str]:
    """The dataset node's folder dropdown, as ComfyUI reads it."""
    from .comfy_inprocess import node_class

    return node_class("LoraLabDataset").INPUT_TYPES()["required"]["folder"][1]["options"]


def test_cache_folder_stays_in_the_user_directory(nodes_ready, tmp_path):
    import folder_paths

    from .comfy_inprocess import node_class

    EncodingCacheNode = node_class("LoraLabCache")
    user = Path(folder_paths.get_user_directory())
    folder = images(tmp_path / "data", [(64, 64)])
    for bad in ("/", "..", str(user), str(Path(os.path.realpath(user)).parent / "elsewhere")):
        assert "not a folder inside ComfyUI's user directory" in EncodingCacheNode.validate_inputs(cache_folder=bad)
        with pytest.raises(Exception, match="cache_folder") as refused:
            call_node("LoraLabDataset", **dataset_inputs(folder, cache_folder=bad))
        assert type(refused.value).__name__ == "PathNotAllowed"
    assert EncodingCacheNode.validate_inputs(cache_folder="") is True
    assert EncodingCacheNode.validate_inputs(cache_folder="a_cache/under_user") is True
