"""Per-step time of `lora-lab train` in 1 vs 2 CPU processes at the same global batch (gloo, torchrun).

    python bench/cli_scaling.py [--family sd15] [--batch 4] [--steps 12] [--resolution 64] [--json out.json]

Each configuration is a fresh `python -m lora_lab train` run on the same tiny random pipeline (lora_core/
tiny_folders.py) and the bundled tiny dataset: one process with one thread, one process with two threads (all
the machine's cores to one process), and two processes with one thread each (torchrun --nproc_per_node 2). The
per-step time is the median of the steps rank 0 timed (lora_report.json's step_seconds), leaving out the first
two (allocator warm-up); loading and encoding are not counted. The ratio says what the second process buys at
the same global batch: < 1 is faster. Tests never assert on these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = [("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1)]


def _run(config: Path, out: Path, processes: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "lora_lab", "train", str(config), "--out", str(out)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *cmd[1:]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "lora_report.json").read_text())
    steps = report["step_seconds"][2:]
    return {"processes": processes, "threads": threads, "step_s": statistics.median(steps), "steps_timed": len(steps),
            "wall_s": round(time.perf_counter() - start, 1), "world_size": report["world_size"],
            "last_loss": report["losses"][-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd15", choices=("sd15", "sdxl", "sd3", "flux", "sana", "wan"))
    parser.add_argument("--batch", type=int, default=4, help="global batch (divides by 2)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from tiny_folders import make_tiny_pipeline

    with tempfile.TemporaryDirectory(prefix="lora_lab_cli_scaling_") as tmp:
        tmp = Path(tmp)
        folder = make_tiny_pipeline(tmp / args.family, args.family)
        config = tmp / "run.toml"
        config.write_text(
            f'[model]\npath = "{folder}"\n[data]\npath = "{REPO / "examples" / "tiny_dataset"}"\n'
            f"resolution = {args.resolution}\n[train]\nsteps = {args.steps}\nbatch_size = {args.batch}\nrank = 8\n"
            f'alpha = 8.0\nlearning_rate = 1e-3\ntargets = "attention_mlp"\n[output]\nformats = ["comfyui"]\n'
            "loss_plot = false\n")
        rows = []
        for label, processes, threads in RUNS:
            row = _run(config, tmp / f"out_{processes}_{threads}", processes, threads)
            rows.append({"config": label, **row})
            print(f"{label:24s} {row['step_s'] * 1000:8.1f} ms/step  (median of {row['steps_timed']} steps, "
                  f"wall {row['wall_s']} s)", flush=True)
    base = rows[0]["step_s"]
    for row in rows:
        row["ratio_to_1x1"] = round(row["step_s"] / base, 3)
    print("ratio to 1 process x 1 thread: " + ", ".join(f"{r['config']}: {r['ratio_to_1x1']}" for r in rows))
    summary = {"family": args.family, "global_batch": args.batch, "steps": args.steps, "resolution": args.resolution,
               "cpu_count": os.cpu_count(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
