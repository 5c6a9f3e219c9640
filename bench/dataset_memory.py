"""Peak memory of loading and caching a large image dataset (500 images of 1024²; the goal: < 2 GB above start).

    python bench/dataset_memory.py [--images 500] [--size 1024] [--json bench/results/dataset_memory.json]

Steps, in one process:
  1. a child process writes N synthetic JPEGs of size x size (smooth colour fields plus noise, ~0.3 MB each)
     with captions, so generating them is not charged to this process;
  2. baseline: this process's resident set after imports;
  3. load_image_folder with aspect buckets (header reads and content hashes only), then build_training_data
     with a disk cache: every image is decoded, fitted to its bucket, encoded and written to the cache;
  4. the same again with a fresh memory layer (second run: everything comes from the disk cache).
The peak of each phase is VmHWM from /proc/self/status, reset between phases through /proc/self/clear_refs.

The encoder is a stand-in with a real VAE's input and output shapes (8x8 average pooling into 4 latent
channels, fp32), so the numbers are those of the data path itself: decoding, resizing, caching and the
latents held for training. A real VAE adds its own weights and activations, which ComfyUI manages.
For scale: decoding everything up front as float32, as the loader did before, would hold
N x size² x 3 x 4 bytes (6.0 GiB for 500 images of 1024²).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _write_images(folder: str, count: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        freq = rng.uniform(1, 4, 3)
        base = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * (freq[c] * xx + (c + 1) * yy) + i) for c in range(3)], axis=-1)
        noise = rng.normal(0, 0.03, base.shape).astype(np.float32)
        pixels = (np.clip(base + noise, 0, 1) * 255).astype(np.uint8)
        # a few aspect ratios, as real folders have; every one has about size² pixels or more
        if i % 3 == 1:
            pixels = np.concatenate([pixels, pixels[:, : size // 2]], axis=1)
        elif i % 3 == 2:
            pixels = np.concatenate([pixels, pixels[: size // 3]], axis=0)
        Image.fromarray(pixels).save(Path(folder) / f"img_{i:04d}.jpg", quality=90)
        (Path(folder) / f"img_{i:04d}.txt").write_text(f"synthetic image {i}, colour field, test")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--workdir", type=Path, default=None, help="where images and cache go (default: a temp dir)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO.parent))
    import torch

    from lora_lab.lora_core.data.buckets import BucketConfig
    from lora_lab.lora_core.data.dataset import load_image_folder
    from lora_lab.lora_core.cache.encoding_cache import EncodingCache, MemoryStore, cache_usage
    from lora_lab.lora_core.data.training_samples import Encoders, build_training_data

    torch.set_num_threads(2)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lora_lab_dataset_bench_"))
    images, cache_dir = work / "images", work / "cache"
    images.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(target=_write_images, args=(str(images), args.images, args.size))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit("writing the synthetic images failed")
    print(f"wrote {args.images} images of {args.size}px in {time.perf_counter() - started:.0f} s to {images}")

    def encode_pixels(batch: torch.Tensor) -> torch.Tensor:
        x = batch.permute(0, 3, 1, 2)
        pooled = torch.nn.functional.avg_pool2d(x, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)

    def encode_text(text: str) -> list:
        g = torch.Generator().manual_seed(len(text))
        return [[torch.randn(1, 77, 768, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]

    encoders = Encoders(encode_pixels, "bench-standin-vae", encode_text, "bench-standin-text")
    baseline = _rss_kib("VmRSS")
    results = {"images": args.images, "size": args.size, "baseline_rss_mib": round(baseline / 1024, 1),
               "eager_float32_gib": round(args.images * args.size**2 * 12 / 2**30, 2)}
    for phase in ("first_run", "second_run"):
        _reset_peak()
        t0 = time.perf_counter()
        dataset = load_image_folder(images, args.size, buckets=BucketConfig(args.size, 256, 2048, 64), cache_folder=cache_dir)
        data = build_training_data(dataset, encoders, EncodingCache(cache_dir, memory=MemoryStore()), seed=0)
        elapsed = time.perf_counter() - t0
        peak = _rss_kib("VmHWM")
        held = sum(s.latent.numel() * s.latent.element_size() for s in data.samples)
        results[phase] = {"peak_above_start_mib": round((peak - baseline) / 1024, 1), "seconds": round(elapsed, 1),
                          "latents_held_mib": round(held / 2**20, 1), "report": data.report,
                          "buckets": {f"{k[0]}x{k[1]}": len(v) for k, v in dataset.bucket_groups().items()}}
        print(f"{phase}: peak RSS {results[phase]['peak_above_start_mib']} MiB above start "
              f"({elapsed:.0f} s; latents held {results[phase]['latents_held_mib']} MiB); {data.report}")
        del dataset, data
    results["cache"] = str(cache_usage(cache_dir))
    results["goal_mib"] = 2048
    results["pass"] = all(results[p]["peak_above_start_mib"] < 2048 for p in ("first_run", "second_run"))
    print(json.dumps(results, indent=2))
    if args.workdir is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
