"""Does gradient checkpointing save memory in Train LoRA? Measured in one real ComfyUI server.

Random full SD1.5, 4 captioned images at 256 px, batch 4, rank 4, attention preset, fp32 on the CPU. The
server first runs a warm-up prompt (loads the checkpoint, VAE and CLIP, trains one step), then alternates
training prompts with checkpointing off and on. For each prompt the kernel's peak-RSS counter is reset
(`echo 5 > /proc/<pid>/clear_refs`), and
    peak above resident = VmHWM after the prompt - VmRSS before it
is what that training run needed on top of the loaded server. Each mode runs twice (off, on, off, on) with
a new seed each time (an identical prompt would come from ComfyUI's cache); the smaller of the two is kept.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python bench/checkpoint_memory.py \
        [--steps 2] [--size 256] [--batch 4] [--json bench/results/checkpoint_memory_jan.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.comfy_env import why_unavailable  # noqa: E402
from tests.integration.comfy_models import ensure_model  # noqa: E402
from tests.integration.comfy_server import start_server  # noqa: E402
from tests.integration.sample_data import make_image_folder  # noqa: E402
from tests.integration.workflows import train_only_workflow  # noqa: E402


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    reason = why_unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    checkpoint = ensure_model("sd15")
    work = Path(tempfile.mkdtemp(prefix="lora_lab_ckpt_mem_"))
    images = make_image_folder(work / "input" / "set", count=args.batch, size=args.size)
    server = start_server(work, {"checkpoints": [checkpoint.parent], "loras": [work / "loras"]}, {"lora_lab": REPO})
    base = {"steps": args.steps, "rank": 4, "alpha": 4.0, "batch_size": args.batch, "precision": "auto"}
    dataset = {"resolution": args.size}
    runs = []
    try:
        pid = server.process.pid
        server.run(train_only_workflow(checkpoint.name, str(images), dict(base, steps=1, seed=100), dataset_inputs=dataset,
                                       save_name="warmup"), timeout=args.timeout)
        for seed, checkpointing in enumerate([False, True, False, True], start=1):
            before = status_kb(pid, "VmRSS")
            reset_peak(pid)
            started = time.monotonic()
            server.run(train_only_workflow(checkpoint.name, str(images), dict(base, seed=seed, gradient_checkpointing=checkpointing),
                                           dataset_inputs=dataset, save_name=f"run{seed}"), timeout=args.timeout)
            peak = status_kb(pid, "VmHWM")
            run = {"gradient_checkpointing": checkpointing, "rss_before_mb": before / 1024, "peak_mb": peak / 1024,
                   "peak_above_resident_mb": (peak - before) / 1024, "wall_s": time.monotonic() - started,
                   "loadavg": os.getloadavg()[0]}
            runs.append(run)
            print(run, flush=True)
    finally:
        server.stop()
    off = min(r["peak_above_resident_mb"] for r in runs if not r["gradient_checkpointing"])
    on = min(r["peak_above_resident_mb"] for r in runs if r["gradient_checkpointing"])
    summary = {"peak_above_resident_mb_off": off, "peak_above_resident_mb_on": on, "ratio_on_vs_off": on / off}
    print(f"\npeak above resident: checkpointing off {off:.0f} MB, on {on:.0f} MB, ratio {on / off:.2f} (goal <= 0.6)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "checkpoint_memory", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "comfyui": os.environ.get("COMFYUI_PATH"),
            "setup": {"model": "random full SD1.5", "size": args.size, "batch": args.batch, "steps": args.steps,
                      "rank": 4, "preset": "attention", "device": "cpu"},
            "runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
