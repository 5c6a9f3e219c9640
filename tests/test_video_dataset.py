"""Video clips: frame sampling (4N+1, fps, head / uniform / chunk), reading mp4 / webm / mov / gif and frame
folders through PyAV, buckets over size and frame count, images as 1-frame clips, 5-D latents, bad videos."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_lab.lora_core.data.buckets import BucketConfig, place
from lora_lab.lora_core.cache.encoding_cache import EncodingCache, MemoryStore
from lora_lab.lora_core.errors import DatasetError
from lora_lab.lora_core.data.frame_sampling import plan_clips, snap_frames, timeline
from lora_lab.lora_core.data.training_samples import Encoders, build_training_data
from lora_lab.lora_core.data.video_dataset import load_video_folder
from lora_lab.lora_core.data.video_io import load_frames, probe

av = pytest.importorskip("av", reason="PyAV (pip install av) reads the videos")

FORMATS = {".mp4": ("mp4", "libx264", "yuv420p"), ".webm": ("webm", "libvpx-vp9", "yuv420p"),
           ".mov": ("mov", "png", "rgb24"), ".mkv": ("matroska", "mpeg4", "yuv420p"), ".gif": ("gif", "gif", "rgb8")}


def frame_value(i: int) -> int:
    return (i * 9) % 250


def write_video(path: Path, frames: int, size=(64, 48), fps: int = 8) -> Path:
    """Frame i is a flat grey of frame_value(i) with a white bar at the left (to see flips and crops)."""
    container_format, codec, pix_fmt = FORMATS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix_fmt
        for i in range(frames):
            pixels = np.full((size[1], size[0], 3), frame_value(i), np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frames(folder: Path, frames: int, size=(64, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        Image.new("RGB", size, (frame_value(i),) * 3).save(folder / f"f{i:04d}.png")
    return folder


# ---- frame sampling --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, snapped", [(1, 1), (4, 1), (5, 5), (8, 5), (9, 9), (80, 77), (81, 81)])
def test_snap_to_4n_plus_1(n, snapped):
    assert snap_frames(n) == snapped


def test_timeline_resamples_by_time():
    assert timeline(10, 30, 0) == list(range(10))
    assert timeline(10, 30, 15) == [0, 2, 4, 6, 8]
    assert timeline(9, 24, 16) == [0, 2, 3, 5, 6, 8]  # 1.5 source frames per target frame, nearest
    assert timeline(4, 10, 20) == [0, 1, 1, 2, 2, 3, 3]  # upsampling repeats frames


def test_plan_head_uniform_chunk():
    assert [p.indices for p in plan_clips(30, 24, 9, "head")] == [tuple(range(9))]
    assert [p.indices[0] for p in plan_clips(30, 24, 9, "chunk")] == [0, 9, 18]
    uniform = plan_clips(30, 24, 9, "uniform", clips=3)
    assert [p.indices[0] for p in uniform] == [0, 10, 21] and all(p.count == 9 for p in uniform)
    assert [p.indices for p in plan_clips(30, 30, 5, "head", target_fps=15)] == [(0, 2, 4, 6, 8)]
    assert plan_clips(30, 30, 5, "head", target_fps=15)[0].fps == 15
    assert plan_clips(30, 24, 10, "head")[0].count == 9  # 10 snaps down to 9


def test_short_video_gives_fewer_frames_or_nothing():
    assert plan_clips(7, 24, 9, "head")[0].indices == (0, 1, 2, 3, 4)
    assert plan_clips(7, 24, 9, "head", allow_fewer=False) == []
    with pytest.raises(DatasetError, match="frame sampling"):
        plan_clips(30, 24, 9, "random")


# ---- reading ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", list(FORMATS))
def test_probe_and_decode_each_format(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", frames=12, size=(64, 48))
    info = probe(path)
    assert info.size == (64, 48) and info.frames == 12 and info.fps == pytest.approx(8, rel=0.05)
    placement = place((64, 48), (32, 32))
    frames = load_frames(path, [0, 3, 3, 11], placement)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == torch.float32
    means = frames.mean(dim=(1, 2, 3)) * 255
    tolerance = 1.5 if suffix == ".mov" else 8  # lossless png-in-mov is exact; the rest are lossy codecs
    for got, i in zip(means.tolist(), [0, 3, 3, 11]):
        assert abs(got - frame_value(i)) <= tolerance, (suffix, i, got)


def test_frame_folder(tmp_path):
    folder = write_frames(tmp_path / "walk", 6)
    info = probe(folder)
    assert info.size == (64, 48) and info.frames == 6 and info.fps == 0.0
    frames = load_frames(folder, [1, 5], place((64, 48), (64, 48)))
    assert torch.allclose(frames[1], torch.full_like(frames[1], frame_value(5) / 255))


def test_bad_videos_are_named(tmp_path):
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(DatasetError, match="noise.mp4"):
        probe(bad)
    good = write_video(tmp_path / "short.mp4", frames=6)
    with pytest.raises(DatasetError, match=r"short.mp4 ended after 6 decodable frames; 9 were planned"):
        load_frames(good, list(range(9)), place((64, 48), (64, 48)))
    mixed = write_frames(tmp_path / "mixed", 3)
    Image.new("RGB", (30, 30)).save(mixed / "f0001.png")
    with pytest.raises(DatasetError, match="f0001.png"):
        load_frames(mixed, [0, 1], place((64, 48), (64, 48)))


def test_missing_pyav_is_a_clear_message(tmp_path, monkeypatch):
    path = write_video(tmp_path / "a.mp4", frames=5)
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(DatasetError, match="pip install av"):
        probe(path)


# ---- the dataset --------------------------------------------------------------------------------------

def make_video_folder(root: Path) -> Path:
    write_video(root / "long.mp4", frames=20, size=(96, 64))
    (root / "long.txt").write_text("a long clip")
    write_video(root / "wide.webm", frames=12, size=(128, 48))
    (root / "wide.txt").write_text("a wide clip")
    write_video(root / "tall.gif", frames=10, size=(48, 96))
    write_video(root / "short.mov", frames=6, size=(96, 64))
    write_frames(root / "frames", 9, size=(96, 64))
    (root / "frames.txt").write_text("a frame folder")
    Image.new("RGB", (96, 64), (10, 20, 30)).save(root / "still.png")
    (root / "still.txt").write_text("a still image")
    write_video(root / "3_extra" / "rep.mkv", frames=9, size=(96, 64))
    return root


def test_video_folder_clips_buckets_and_captions(tmp_path):
    root = make_video_folder(tmp_path / "videos")
    ds = load_video_folder(root, 64, frames=9, trigger_word="ohwx", default_caption="a clip",
                           buckets=BucketConfig(64, min_side=32, max_side=128, step=16))
    by_name = {c.path.name: c for c in ds.images}
    assert set(by_name) == {"long.mp4", "wide.webm", "tall.gif", "short.mov", "frames", "still.png", "rep.mkv"}
    assert by_name["long.mp4"].frames.indices == tuple(range(9))
    assert by_name["short.mov"].frame_count == 5  # 6 frames: the largest 4N+1 it holds
    assert by_name["still.png"].frames is None and by_name["still.png"].frame_count == 1
    assert by_name["rep.mkv"].repeats == 3
    assert by_name["frames"].caption == "ohwx, a frame folder" and by_name["tall.gif"].caption == "ohwx, a clip"
    assert by_name["wide.webm"].bucket[0] > by_name["wide.webm"].bucket[1] > 0
    assert by_name["tall.gif"].bucket[0] < by_name["tall.gif"].bucket[1]
    assert by_name["long.mp4"].bucket == (*by_name["long.mp4"].placement.bucket, 9)
    assert by_name["short.mov"].bucket[2] == 5 and by_name["still.png"].bucket[2] == 1
    warnings = "\n".join(ds.warnings)
    assert "short.mov (6 frames)" in warnings and "tall.gif" in warnings  # short clip and missing caption named
    summary = ds.summary()
    assert "7 clips" in summary and ", 9 frames: " in summary and ", 5 frames: " in summary
    pixels = by_name["long.mp4"].load_pixels()
    w, h = by_name["long.mp4"].placement.bucket
    assert pixels.shape == (9, h, w, 3)


def test_chunk_sampling_and_validation_by_file(tmp_path):
    write_video(tmp_path / "v" / "a.mp4", frames=27)
    write_video(tmp_path / "v" / "b.mp4", frames=27)
    write_video(tmp_path / "v" / "c.mp4", frames=27)
    ds = load_video_folder(tmp_path / "v", 48, frames=9, frame_sampling="chunk", validation=1, include_images=False)
    assert len(ds.images) == 6 and len(ds.validation) == 3
    assert len({c.path for c in ds.validation}) == 1 and not {c.path for c in ds.validation} & {c.path for c in ds.images}
    ds = load_video_folder(tmp_path / "v", 48, frames=9, target_fps=4)  # 8 fps source: every second frame
    assert ds.images[0].frames.indices == (0, 2, 4, 6, 8, 10, 12, 14, 16)


def test_short_videos_skip_and_unreadable_videos_are_named(tmp_path):
    root = tmp_path / "v"
    write_video(root / "ok.mp4", frames=9)
    write_video(root / "short.mp4", frames=4)
    (root / "broken.mp4").write_bytes(b"\0" * 1000)
    ds = load_video_folder(root, 48, frames=9, short_videos="skip")
    assert [c.path.name for c in ds.images] == ["ok.mp4"]
    warnings = "\n".join(ds.warnings)
    assert "broken.mp4" in warnings and "Skipped 1 video shorter than 9 frames" in warnings and "short.mp4" in warnings
    (root / "ok.mp4").unlink()
    with pytest.raises(DatasetError, match="broken.mp4") as err:
        load_video_folder(root, 48, frames=9, short_videos="skip")
    assert "short.mp4" in str(err.value)


class VideoVae:
    """A Wan-like stand-in: 8x space and 4x time compression after the first frame, 16 channels."""

    def __init__(self):
        self.calls = 0

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = frames.permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
        first, rest = x[:, :, :1], x[:, :, 1:]
        t = [first] + ([torch.nn.functional.avg_pool3d(rest, (4, 1, 1))] if rest.shape[2] else [])
        x = torch.cat(t, dim=2)
        x = torch.nn.functional.avg_pool3d(x, (1, 8, 8))
        return x.repeat(1, 6, 1, 1, 1)[:, :16]


def test_clips_encode_to_5d_latents_in_frame_buckets(tmp_path):
    root = make_video_folder(tmp_path / "videos")
    ds = load_video_folder(root, 64, frames=9, buckets=BucketConfig(64, min_side=32, max_side=128, step=16),
                           cache_folder=tmp_path / "cache")
    vae = VideoVae()
    encoders = Encoders(vae, "wan-like", lambda text: {"text": text}, "te")
    data = build_training_data(ds, encoders, EncodingCache(ds.cache_folder, memory=MemoryStore()), seed=0)
    for sample, info in zip(data.samples, data.infos):
        frames = info.item.frame_count
        w, h = info.placement.bucket
        assert sample.latent.shape == (16, 1 + (frames - 1) // 4, h // 8, w // 8)
    assert vae.calls == len(ds.images)
    again = VideoVae()
    build_training_data(ds, Encoders(again, "wan-like", lambda text: {"text": text}, "te"),
                        EncodingCache(ds.cache_folder, memory=MemoryStore()), seed=0)
    assert again.calls == 0
    for _ in range(10):
        batch = data.order.next_batch(1)
        assert data.samples[batch[0]].latent.dim() == 4
