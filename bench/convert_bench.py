"""Bench: stream a synthetic ~1 GB Flux LoRA (rank 128, diffusers format, bf16) to ComfyUI format.

Reports throughput (input MB/s) and peak RSS growth vs file size. Goal: >= 300 MB/s, RSS growth <= 25% of the file.
Usage: python bench/convert_bench.py [--rank 128] [--dir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def _rss_mb(field: str = "RssAnon:") -> float:
    """RssAnon: memory this process owns. (VmRSS also counts the mmap'd input's page cache, which is reclaimable.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flux_modules(h=3072, double=19, single=38):
    m = {}
    for i in range(double):
        t = f"transformer_blocks.{i}."
        for n in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                  "attn.to_out.0", "attn.to_add_out"):
            m[t + n] = (h, h)
        m[t + "norm1.linear"] = (6 * h, h)
        m[t + "norm1_context.linear"] = (6 * h, h)
        m[t + "ff.net.0.proj"] = (4 * h, h)
        m[t + "ff.net.2"] = (h, 4 * h)
        m[t + "ff_context.net.0.proj"] = (4 * h, h)
        m[t + "ff_context.net.2"] = (h, 4 * h)
    for i in range(single):
        s = f"single_transformer_blocks.{i}."
        for n in ("attn.to_q", "attn.to_k", "attn.to_v"):
            m[s + n] = (h, h)
        m[s + "proj_mlp"] = (4 * h, h)
        m[s + "proj_out"] = (h, 5 * h)
        m[s + "norm.linear"] = (3 * h, h)
    return m


def make_file(path: Path, rank: int) -> int:
    from lora_lab.lora_core.files.safetensors_io import write_streaming

    entries, order = [], []
    for name, (out, inn) in flux_modules().items():
        for suffix, shape in (("lora_A.weight", (rank, inn)), ("lora_B.weight", (out, rank))):
            entries.append((f"transformer.{name}.{suffix}", torch.bfloat16, shape))
    gen = ((k, torch.randn(shape, dtype=torch.float32).mul_(0.01).to(torch.bfloat16)) for k, _, shape in entries)
    meta = {"lora_adapter_metadata": f'{{"transformer.r": {rank}, "transformer.lora_alpha": {rank}}}'}
    write_streaming(path, entries, meta, gen)
    return path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    from lora_lab.converters import convert_file

    tmp = Path(args.dir or tempfile.mkdtemp(prefix="lora_bench_"))
    src, dst = tmp / "flux_rank_diffusers.safetensors", tmp / "flux_comfyui.safetensors"
    t0 = time.perf_counter()
    size = make_file(src, args.rank)
    print(f"made {src} ({size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s", flush=True)

    peak = [0.0]
    peak_total = [0.0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            peak_total[0] = max(peak_total[0], _rss_mb("VmRSS:"))
            time.sleep(0.005)

    import gc
    gc.collect()
    base = _rss_mb()
    base_total = _rss_mb("VmRSS:")
    peak[0], peak_total[0] = base, base_total
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    report = convert_file(src, dst, "comfyui", overwrite=True)
    elapsed = time.perf_counter() - t0
    load_after = os.getloadavg()
    stop.set()
    watcher.join()
    growth = peak[0] - base
    mb = size / 1e6
    print(f"converted {report.modules_in} modules -> {report.modules_out} ({report.fused} fused), "
          f"unmatched {report.unmatched_count}; output {dst.stat().st_size / 1e6:.0f} MB")
    print(f"time {elapsed:.2f}s  throughput {mb / elapsed:.0f} MB/s (input)  "
          f"peak anon RSS growth {growth:.0f} MB = {100 * growth / mb:.1f}% of file; VmRSS growth incl. mmap'd "
          f"page cache {peak_total[0] - base_total:.0f} MB  (cpus: {os.cpu_count()})")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}: other work on the machine "
          f"slows the copy (the goal is for an idle machine)")
    if not args.keep:
        src.unlink()
        dst.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
