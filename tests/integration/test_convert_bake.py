"""lora-lab bake in a real ComfyUI: a random SD1.5 checkpoint with a LoRA baked in at 0.85, loaded by the stock
CheckpointLoaderSimple, samples the same latent as CheckpointLoaderSimple + LoraLoader at 0.85 (within the fp16
rounding of the stored weights; baked in fp32, to ComfyUI's own precision); and bake's peak memory stays under a
quarter of the checkpoint's size."""

from __future__ import annotations

import os
import subprocess
import sys

from .comfy_env import REPO_ROOT
from .comfy_models import write_kohya_lora
from .sample_data import assert_latents_close, saved_latent
from .workflows import checkpoint_sample_workflow

RSS_PROBE = """
import sys, threading, time, gc
sys.path.insert(0, sys.argv[4])
from lora_lab.converters.bake import bake
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
gc.collect()
base = peak = rss()
done = False
def watch():
    global peak
    while not done:
        peak = max(peak, rss())
        time.sleep(0.002)
threading.Thread(target=watch, daemon=True).start()
report = bake(sys.argv[1], [(sys.argv[2], 0.85, 0.85)], sys.argv[3], dtype=sys.argv[5])
done = True
time.sleep(0.01)
print(report.tensors_changed, peak - base)
"""


def _bake(checkpoint, lora, out, dtype, link_dir) -> tuple[int, int]:
    """Run bake in a fresh process; (tensors changed, peak anonymous RSS growth in bytes)."""
    probe = subprocess.run([sys.executable, "-c", RSS_PROBE, str(checkpoint), str(lora), str(out), str(link_dir), dtype],
                           capture_output=True, text=True, timeout=1800)
    assert probe.returncode == 0, probe.stderr[-4000:]
    changed, growth = map(int, probe.stdout.split()[-2:])
    return changed, growth


def test_baked_checkpoint_samples_like_loraloader(comfy_server, sd15_checkpoint, loras_dir, tmp_path):
    lora = loras_dir / "bake_me.safetensors"
    write_kohya_lora(sd15_checkpoint, lora, pattern="_attn", seed=31, scale=0.08)
    (tmp_path / "lora_lab").symlink_to(REPO_ROOT, target_is_directory=True)
    # the server reads checkpoints from the cache folder; unique names, removed afterwards
    baked = {d: sd15_checkpoint.parent / f"sd15_baked_{d}_{os.getpid()}.safetensors" for d in ("keep", "fp32")}
    try:
        size = sd15_checkpoint.stat().st_size
        changed, growth = _bake(sd15_checkpoint, lora, baked["keep"], "keep", tmp_path)
        print(f"bake: {changed} tensors changed; peak RSS growth {growth / 1e6:.0f} MB = {100 * growth / size:.1f}% "
              f"of the {size / 1e9:.2f} GB checkpoint")
        assert changed > 0 and growth < 0.25 * size
        _bake(sd15_checkpoint, lora, baked["fp32"], "fp32", tmp_path)
        mark = comfy_server.log_mark()
        latents = {name: saved_latent(comfy_server, comfy_server.run(checkpoint_sample_workflow(
            ckpt, lora=extra, filename_prefix=f"latents/bake_{name}"), timeout=1200))
            for name, ckpt, extra in (("keep", baked["keep"].name, None), ("fp32", baked["fp32"].name, None),
                                      ("stock", sd15_checkpoint.name, (lora.name, 0.85, 0.85)),
                                      ("base", sd15_checkpoint.name, None))}
        assert "lora key not loaded" not in comfy_server.log_since(mark)
    finally:
        for path in baked.values():
            path.unlink(missing_ok=True)
    stock = latents["stock"]
    scale = stock.abs().max().item()
    for name in ("fp32", "keep", "base"):
        print(f"bake: max |latent({name}) - latent(LoraLoader 0.85)| = "
              f"{(latents[name] - stock).abs().max().item() / scale:.2e} x max |latent|")
    assert (stock - latents["base"]).abs().max().item() > 1e-2, "the LoRA had no visible effect"
    # fp32: W + 0.85 dW exactly as ComfyUI computes it on the CPU; keep (fp16): the same, rounded to fp16
    assert_latents_close(stock, latents["fp32"], "baked (fp32) vs CheckpointLoaderSimple + LoraLoader at 0.85")
    assert_latents_close(stock, latents["keep"], "baked (fp16) vs CheckpointLoaderSimple + LoraLoader at 0.85",
                         rel=2e-2)
