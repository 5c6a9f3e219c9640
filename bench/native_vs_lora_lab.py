"""ComfyUI's native TrainLoraNode vs LoRA Lab's LoraLabTrain, side by side on one machine, as ratios.

Same random full-size SD1.5 checkpoint, same 4 captioned 64x64 images, rank 4, fp32, batch 1, gradient
checkpointing ON for every configuration (both nodes' default; --no-gradient-checkpointing turns it off), both
driven through a real ComfyUI server exactly as a user runs them. The native node runs with the version's own
defaults for every input we do not set (read from /object_info), and where the version has it, also in its
bypass mode ("native_bypass"); ratios are taken against the better native configuration of each measure
(*_vs_native), and against the native node at its own defaults (*_vs_native_default; bypass is off by default).

Per-step time is a slope: each configuration runs at two step counts (native 2 and 6, LoRA Lab 2 and 22,
its steps being much shorter) and
    s_per_step = (t_hi - t_lo) / (hi - lo)
so checkpoint loading, VAE/CLIP encoding and start-up cancel out. t is ComfyUI's own execution time of the
prompt (history execution_start -> execution_success).

Peak memory: every (configuration, step count) runs in a FRESH server process, and its peak resident set is
read from the kernel (/proc/<pid>/status VmHWM) just before the server is stopped. A fresh process per run is
needed because memory freed by one run stays in the allocator (and VmHWM never goes down), so a shared process
would charge the later runs with the earlier ones' peak. The idle server's VmHWM (after start-up, before the
prompt) is recorded too. The native node forces a full model load; LoRA Lab need not, and this measures it.

Usage (ComfyUI's python; models are built once into $LORA_LAB_TEST_CACHE or <tmp>/lora_lab_test_cache_<uid>):
    COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python bench/native_vs_lora_lab.py \
        [--steps 2 6] [--lora-lab-steps 2 22] [--no-gradient-checkpointing]
        [--configs native lora_lab_default lora_lab_all_linear] [--json bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.comfy_env import why_unavailable  # noqa: E402
from tests.integration.comfy_models import ensure_model  # noqa: E402
from tests.integration.comfy_server import PromptFailed, start_server  # noqa: E402
from tests.integration.sample_data import make_image_folder  # noqa: E402
from tests.integration.workflows import native_defaults, native_train_workflow, train_only_workflow  # noqa: E402

RANK = 4
LEARNING_RATE = 1e-4
DATASET_SUBFOLDER = "bench_set"

# configuration name -> (kind, extra inputs). LoRA Lab inputs follow workflows.DEFAULT_TRAIN_INPUTS.
CONFIGS = {
    "native": ("native", {"rank": RANK, "learning_rate": LEARNING_RATE, "training_dtype": "fp32",
                          "lora_dtype": "fp32", "gradient_checkpointing": True, "batch_size": 1}),
    "native_bypass": ("native", {"rank": RANK, "learning_rate": LEARNING_RATE, "training_dtype": "fp32",
                                 "lora_dtype": "fp32", "gradient_checkpointing": True, "batch_size": 1,
                                 "bypass_mode": True}),
    "lora_lab_default": ("lora_lab", {"rank": RANK, "alpha": float(RANK), "learning_rate": LEARNING_RATE,
                                      "precision": "auto", "gradient_checkpointing": True, "batch_size": 1}),
    "lora_lab_all_linear": ("lora_lab", {"rank": RANK, "alpha": float(RANK), "learning_rate": LEARNING_RATE,
                                         "precision": "auto", "gradient_checkpointing": True, "batch_size": 1,
                                         "target_preset": "all_linear"}),
}


def proc_status_kb(pid: int, field: str) -> int | None:
    """A '<field>: N kB' value of /proc/<pid>/status (VmRSS, VmHWM), or None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def workflow_for(config: str, steps: int, ckpt_name: str, dataset_abs: Path, node_info: dict | None = None) -> dict:
    kind, inputs = CONFIGS[config]
    inputs = dict(inputs, steps=steps, seed=0)
    if kind == "native":
        return native_train_workflow(ckpt_name, DATASET_SUBFOLDER, inputs, save_prefix=f"loras/bench_{config}",
                                     node_info=node_info)
    # LoraLabTrain's full input list comes from workflows.DEFAULT_TRAIN_INPUTS; overrides above.
    return train_only_workflow(ckpt_name, str(dataset_abs), dict(inputs, output_name=f"bench_{config}"),
                               save_name=f"bench_{config}_{steps}")


def run_once(config: str, steps: int, checkpoint: Path, images: Path, work: Path, timeout: float) -> dict:
    """One fresh server, one prompt; returns timings, peak RSS and any error."""
    root = work / f"{config}_{steps}"
    shutil.rmtree(root, ignore_errors=True)
    dataset = root / "input" / DATASET_SUBFOLDER
    shutil.copytree(images, dataset)
    loras = root / "loras"
    loras.mkdir(parents=True)
    record = {"config": config, "steps": steps, "loadavg_before": os.getloadavg()[0]}
    server = start_server(root, {"checkpoints": [checkpoint.parent], "loras": [loras]},
                          {"lora_lab": REPO})
    try:
        record["idle_hwm_mb"] = (proc_status_kb(server.process.pid, "VmHWM") or 0) / 1024
        info = server.object_info("TrainLoraNode") if CONFIGS[config][0] == "native" else None
        if info is not None and any(k not in native_defaults(info) for k in CONFIGS[config][1]):
            record["error"] = f"this ComfyUI's TrainLoraNode has no {sorted(set(CONFIGS[config][1]) - set(native_defaults(info)))}"
            return record
        started = time.monotonic()
        history = server.run(workflow_for(config, steps, checkpoint.name, dataset, info), timeout=timeout)
        record["wall_s"] = time.monotonic() - started
        record["exec_s"] = server.execution_seconds(history)
        record["peak_rss_mb"] = (proc_status_kb(server.process.pid, "VmHWM") or 0) / 1024
        record["loadavg_after"] = os.getloadavg()[0]
        record["lora_key_not_loaded"] = "lora key not loaded" in server.log_text()
    except PromptFailed as exc:
        record["error"] = str(exc)[:2000]
    finally:
        record["log"] = str(server.log_path)
        server.stop()
    return record


def summarise(runs: list[dict], step_counts: dict[str, tuple[int, int]]) -> dict:
    summary = {}
    for config in dict.fromkeys(r["config"] for r in runs):
        lo, hi = step_counts[config]
        by_steps = {r["steps"]: r for r in runs if r["config"] == config}
        a, b = by_steps.get(lo, {}), by_steps.get(hi, {})
        if a.get("exec_s") is None or b.get("exec_s") is None:
            summary[config] = {"error": a.get("error") or b.get("error") or "missing run"}
            continue
        summary[config] = {
            "s_per_step": (b["exec_s"] - a["exec_s"]) / (hi - lo),
            "fixed_s": a["exec_s"] - lo * (b["exec_s"] - a["exec_s"]) / (hi - lo),
            "peak_rss_mb": max(a["peak_rss_mb"], b["peak_rss_mb"]),
            "idle_rss_mb": b["idle_hwm_mb"],
        }
    natives = [s for c, s in summary.items() if CONFIGS[c][0] == "native" and "error" not in s]
    if not natives:
        return summary
    best_time = min(s["s_per_step"] for s in natives)
    best_rss = min(s["peak_rss_mb"] for s in natives)
    default = summary.get("native", {})  # the native node at its own defaults (bypass off)
    for config, s in summary.items():
        if "error" in s:
            continue
        s["step_time_ratio_vs_native"] = s["s_per_step"] / best_time
        s["peak_rss_ratio_vs_native"] = s["peak_rss_mb"] / best_rss
        if "s_per_step" in default:
            s["step_time_ratio_vs_native_default"] = s["s_per_step"] / default["s_per_step"]
            s["peak_rss_ratio_vs_native_default"] = s["peak_rss_mb"] / default["peak_rss_mb"]
    return summary


def print_table(summary: dict) -> None:
    print(f"\n{'config':<22}{'s/step':>9}{'fixed s':>9}{'peak RSS MB':>13}{'time x':>9}{'RSS x':>8}"
          f"{'time x def':>12}{'RSS x def':>11}")
    for config, s in summary.items():
        if "error" in s:
            print(f"{config:<22}  ERROR: {s['error'].splitlines()[0][:90]}")
            continue
        print(f"{config:<22}{s['s_per_step']:>9.2f}{s['fixed_s']:>9.1f}{s['peak_rss_mb']:>13.0f}"
              f"{s.get('step_time_ratio_vs_native', 1.0):>9.2f}{s.get('peak_rss_ratio_vs_native', 1.0):>8.2f}"
              f"{s.get('step_time_ratio_vs_native_default', float('nan')):>12.2f}"
              f"{s.get('peak_rss_ratio_vs_native_default', float('nan')):>11.2f}")
    print("(x = ratio to the better native configuration of each measure; x def = ratio to the native node at its"
          " own defaults, bypass off; < 1 is better)")
    print("Timings are only comparable when nothing else loads the CPU: see loadavg_* in the JSON runs.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 6], metavar=("LO", "HI"),
                        help="step counts of the native runs")
    # LoRA Lab steps are an order of magnitude shorter: a wider span keeps start-up jitter out of the slope.
    parser.add_argument("--lora-lab-steps", type=int, nargs=2, default=[2, 22], metavar=("LO", "HI"))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--work", type=Path, default=None, help="scratch dir (default: a new temp dir)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true",
                        help="turn gradient checkpointing off for every configuration (on is both nodes' default)")
    args = parser.parse_args(argv)
    for _kind, inputs in CONFIGS.values():
        inputs["gradient_checkpointing"] = not args.no_gradient_checkpointing
    reason = why_unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    step_counts = {c: tuple(sorted(args.steps if CONFIGS[c][0] == "native" else args.lora_lab_steps))
                   for c in args.configs}
    checkpoint = ensure_model("sd15")
    work = args.work or Path(tempfile.mkdtemp(prefix="lora_lab_bench_"))
    images = make_image_folder(work / "images", count=4, size=64)
    runs = []
    for config in args.configs:
        for steps in step_counts[config]:
            print(f"running {config} steps={steps} ...", flush=True)
            record = run_once(config, steps, checkpoint, images, work, args.timeout)
            runs.append(record)
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in record.items() if k != "log"},
                  flush=True)
            if "error" in record:
                break  # the other step count would fail the same way (or the config does not exist here)
    summary = summarise(runs, step_counts)
    print_table(summary)
    import torch

    result = {
        "benchmark": "native_vs_lora_lab", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "comfyui": os.environ.get("COMFYUI_PATH")},
        "setup": {"model": "random full SD1.5 (fp16 file, fp32 compute)", "images": "4 x 64x64, captions",
                  "gradient_checkpointing": not args.no_gradient_checkpointing,
                  "rank": RANK, "learning_rate": LEARNING_RATE, "steps": step_counts, "device": "cpu",
                  "configs": {c: CONFIGS[c][1] for c in args.configs}},
        "runs": runs, "summary": summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
