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

    from lora_lab.lora_core.encoding_cache import EncodingCache, MemoryStore

    EncodingCache(tmp_path / "c", memory=MemoryStore()).get_or_encode("latents", "ab" * 20, lambda: torch.ones(10))
    (report,) = call_node("LoraLabCache", cache_folder=str(tmp_path / "c"), action="report")
    assert "1 file" in report and str(tmp_path / "c") in report
    (report,) = call_node("LoraLabCache", cache_folder=str(tmp_path / "c"), action="clear")
    assert report.startswith("Cleared") and not list((tmp_path / "c").rglob("*.safetensors"))
    (report,) = call_node("LoraLabCache", cache_folder="", action="report")
    assert "memory only" in report
