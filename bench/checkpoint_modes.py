"""Train LoRA's checkpointing modes and compile, side by side with ComfyUI's native trainer at its best
configuration (bypass, fp32), in ONE ComfyUI server, as ratios: a training step in sampling forwards, and
peak memory above resident as a share of checkpointing off.

Families: `sd15` (the harness' random full SD1.5, CheckpointLoaderSimple) and `flux` (a random Flux-dev-shaped
model with 1 double + 4 single blocks, hidden 3072: UNETLoader + CLIPLoader clip_l + VAELoader), 4 captioned
images at --size px, rank 4, attention preset, batch 1, fp32, AdamW, CPU.

In one server, after a warm-up (one sampling prompt, one 1-step prompt of each configuration), --repeats
rounds of, in order:
    sampling   KSampler, euler, cfg 1.0 (ComfyUI then runs one forward per step, no uncond), at two step counts
    each configuration (CONFIGS) at two step counts
Times are ComfyUI's own execution time of each prompt (history execution_start -> execution_success), and
    s/forward = slope of sampling time over steps,   s/step = slope of training time over steps
so loading, encoding and start-up cancel; step/forward = s/step / s/forward. With `compile`, the warm-up
prompt compiles and the measured prompts reuse its code (same process, same shapes): the compile time and the
graphs compiled come apart, from the trainer's "compile" log line of the warm-up prompt (and its time).

Peak memory above resident: before each prompt the kernel's peak counter is reset (clear_refs 5), and
    peak above resident = VmHWM after the prompt - VmRSS before it
The server runs with glibc's mmap threshold fixed at 16 KiB (MALLOC_MMAP_THRESHOLD_) so that freed tensors go
back to the kernel and one prompt's peak is not hidden in the heap a previous prompt left (at 64 px SD1.5's
activations are 5-80 KB each); the same setting applies to every configuration and to sampling. The smaller
peak of each configuration's runs is kept (--repeats rounds x 2 step counts).

    COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python bench/checkpoint_modes.py --family sd15 \\
        [--size 64] [--steps 2 6] [--native-steps 2 4] [--sample-steps 3 9] [--repeats 2] \\
        [--configs off partial full partial_compile native_bypass] [--json bench/results/checkpoint_modes_sd15.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
from tests.integration.workflows import (DEFAULT_DATASET_INPUTS, DEFAULT_TRAIN_INPUTS, NATIVE_TRAIN_INPUTS,  # noqa: E402
                                         LORA_LAB_NODES, Graph, native_defaults)

RANK = 4
LORA_LAB = {"rank": RANK, "alpha": float(RANK), "learning_rate": 1e-4, "precision": "fp32", "batch_size": 1,
            "target_preset": "attention", "validation_every": 0}
CONFIGS = {
    "off": {"gradient_checkpointing": "off"},
    "partial": {"gradient_checkpointing": "partial"},
    "full": {"gradient_checkpointing": "full"},
    "off_compile": {"gradient_checkpointing": "off", "compile": True},
    "partial_compile": {"gradient_checkpointing": "partial", "compile": True},
    # ComfyUI's TrainLoraNode at its best on the CPU: bypass mode, fp32, its own checkpointing on
    "native_bypass": {"native": True, "bypass_mode": True, "gradient_checkpointing": True},
}
FAMILIES = {
    "sd15": {"checkpoint": "sd15"},
    "flux": {"unet": "flux_bench", "clip": ("clip_l", "stable_diffusion"), "vae": "flux_vae"},
}
SUBFOLDER = "bench_set"


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def loaders(g: Graph, family: dict, names: dict) -> tuple:
    """(model, clip, vae) links for the family's stock loaders."""
    if "checkpoint" in family:
        ckpt = g.add("CheckpointLoaderSimple", ckpt_name=names["checkpoint"])
        return ckpt[0], ckpt[1], ckpt[2]
    model = g.add("UNETLoader", unet_name=names["unet"], weight_dtype="default")[0]
    clip = g.add("CLIPLoader", clip_name=names["clip"], type=family["clip"][1])[0]
    vae = g.add("VAELoader", vae_name=names["vae"])[0]
    return model, clip, vae


def sampling_workflow(family: dict, names: dict, steps: int, size: int, seed: int) -> dict:
    g = Graph()
    model, clip, _vae = loaders(g, family, names)
    pos = g.add("CLIPTextEncode", text="a photo of a cat", clip=clip)[0]
    neg = g.add("CLIPTextEncode", text="", clip=clip)[0]
    channels = 4 if "checkpoint" in family else 16
    latent = g.add("EmptyLatentImage", width=size, height=size, batch_size=1)[0] if channels == 4 else \
        g.add("EmptySD3LatentImage", width=size, height=size, batch_size=1)[0]
    sampled = g.add("KSampler", model=model, positive=pos, negative=neg, latent_image=latent, seed=seed, steps=steps,
                    cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    g.add("SaveLatent", samples=sampled[0], filename_prefix=f"latents/s{seed}")
    return g.api()


def training_workflow(family: dict, names: dict, config: str, steps: int, size: int, seed: int, images: str,
                      native_info: dict | None) -> dict:
    g = Graph()
    model, clip, vae = loaders(g, family, names)
    inputs = dict(CONFIGS[config])
    if inputs.pop("native", False):
        data = g.add("LoadImageTextDataSetFromFolder", folder=SUBFOLDER)
        made = g.add("MakeTrainingDataset", images=data[0], vae=vae, clip=clip, texts=data[1])
        wanted = dict(NATIVE_TRAIN_INPUTS, rank=RANK, learning_rate=1e-4, training_dtype="fp32", lora_dtype="fp32",
                      steps=steps, seed=seed, **inputs)
        known = native_defaults(native_info or {})
        trained = g.add("TrainLoraNode", model=model, latents=made[0], positive=made[1],
                        **{**known, **{k: v for k, v in wanted.items() if k in known}})
        outputs = list((native_info or {}).get("output", ["MODEL", "LORA_MODEL", "LOSS_MAP", "INT"]))
        g.add("SaveLoRA", lora=trained[outputs.index("LORA_MODEL")], prefix=f"loras/bench_native_{seed}",
              steps=trained[outputs.index("INT")])  # an output node: a prompt needs one
        return g.api()
    dataset = g.add(LORA_LAB_NODES["dataset"], folder=images, **dict(DEFAULT_DATASET_INPUTS, resolution=size))
    train = g.add(LORA_LAB_NODES["train"], model=model, clip=clip, vae=vae, dataset=dataset[0],
                  **dict(DEFAULT_TRAIN_INPUTS, **LORA_LAB, **inputs, steps=steps, seed=seed,
                         output_name=f"bench_{config}"))
    g.add(LORA_LAB_NODES["save"], lora=train[1], name=f"bench_{config}_{steps}_{seed}")
    return g.api()


def compile_metadata(loras: Path, config: str, steps: int, seed: int) -> dict:
    """lora_lab_compile and lora_lab_gradient_checkpointing of the LoRA a run saved."""
    from safetensors import safe_open

    files = sorted(loras.glob(f"bench_{config}_{steps}_{seed}*.safetensors"))
    if not files:
        return {}
    with safe_open(str(files[-1]), "pt") as f:
        meta = f.metadata() or {}
    return {k: meta[k] for k in ("lora_lab_compile", "lora_lab_gradient_checkpointing") if k in meta}


def compile_report(log: str) -> str:
    """The trainer's 'LoRA Lab: compile <outcome>: <graphs, shapes, seconds>' line, if the run compiled."""
    lines = [line.split("LoRA Lab: compile ", 1)[1] for line in log.splitlines() if "LoRA Lab: compile " in line]
    return lines[-1].strip() if lines else ""


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (steps, seconds)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def summarise(runs: list[dict]) -> dict:
    sampling = [(r["steps"], r["exec_s"]) for r in runs if r["config"] == "sampling" and "exec_s" in r]
    per_forward = slope(sampling) if len({s for s, _ in sampling}) > 1 else float("nan")
    summary: dict = {"sampling": {"s_per_forward": per_forward}}
    for config in dict.fromkeys(r["config"] for r in runs if r["config"] != "sampling"):
        mine = [r for r in runs if r["config"] == config]
        good = [r for r in mine if "exec_s" in r]
        if len({r["steps"] for r in good}) < 2:
            summary[config] = {"error": next((r["error"] for r in mine if "error" in r), "missing runs")}
            continue
        s_step = slope([(r["steps"], r["exec_s"]) for r in good])
        per_round = {}
        for r in good:
            per_round.setdefault(r["round"], []).append((r["steps"], r["exec_s"]))
        rounds = [slope(p) / per_forward for p in per_round.values() if len({s for s, _ in p}) > 1]
        summary[config] = {"s_per_step": s_step, "step_in_forwards": s_step / per_forward,
                           "step_in_forwards_per_round": rounds,
                           "peak_above_resident_mb": min(r["peak_above_resident_mb"] for r in good),
                           "metadata": good[-1].get("metadata", {})}
    off = summary.get("off", {}).get("peak_above_resident_mb")
    for s in summary.values():
        if off and "peak_above_resident_mb" in s:
            s["peak_vs_off"] = s["peak_above_resident_mb"] / off
    return summary


def print_table(summary: dict, family: str) -> None:
    print(f"\n{family}: one sampling forward = {summary['sampling']['s_per_forward']:.3f} s")
    print(f"{'config':<18}{'s/step':>9}{'forwards':>10}{'per round':>18}{'peak MB':>10}{'vs off':>8}  compile")
    for config, s in summary.items():
        if config == "sampling":
            continue
        if "error" in s:
            print(f"{config:<18}  ERROR: {s['error'].splitlines()[0][:100]}")
            continue
        rounds = ", ".join(f"{x:.2f}" for x in s["step_in_forwards_per_round"])
        print(f"{config:<18}{s['s_per_step']:>9.3f}{s['step_in_forwards']:>10.2f}{rounds:>18}"
              f"{s['peak_above_resident_mb']:>10.1f}{s.get('peak_vs_off', float('nan')):>8.2f}  "
              f"{s.get('warmup', {}).get('compile_report', '')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=list(FAMILIES), default="sd15")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 6], metavar=("LO", "HI"))
    parser.add_argument("--native-steps", type=int, nargs=2, default=[2, 4], metavar=("LO", "HI"))
    parser.add_argument("--sample-steps", type=int, nargs=2, default=[3, 9], metavar=("LO", "HI"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    reason = why_unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    family = FAMILIES[args.family]
    paths = {role: ensure_model(kind if isinstance(kind, str) else kind[0]) for role, kind in family.items()}
    names = {role: p.name for role, p in paths.items()}
    work = Path(tempfile.mkdtemp(prefix="lora_lab_ckpt_modes_"))
    images = make_image_folder(work / "input" / SUBFOLDER, count=4, size=args.size)
    loras = work / "loras"
    loras.mkdir()
    folders = {"checkpoints": [], "diffusion_models": [], "text_encoders": [], "vae": [], "loras": [loras]}
    for role, p in paths.items():
        folders[{"checkpoint": "checkpoints", "unet": "diffusion_models", "clip": "text_encoders",
                 "vae": "vae"}[role]].append(p.parent)
    allocator = {"MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "131072"}
    server = start_server(work, {k: v for k, v in folders.items() if v}, {"lora_lab": REPO}, env=allocator)
    runs: list[dict] = []
    warmups: list[dict] = []
    seed = 100
    try:
        pid = server.process.pid
        native_info = server.object_info("TrainLoraNode") if any(CONFIGS[c].get("native") for c in args.configs) else None
        # warm-up, not measured: models loaded, first-call imports, caches, and each configuration once
        server.run(sampling_workflow(family, names, 1, args.size, seed), timeout=args.timeout)
        for config in args.configs:  # compile: this prompt compiles; the measured ones reuse its code
            seed += 1
            record = {"config": config, "steps": 1, "warmup": True}
            mark = server.log_mark()
            try:
                history = server.run(training_workflow(family, names, config, 1, args.size, seed, str(images),
                                                       native_info), timeout=args.timeout)
                record.update(exec_s=server.execution_seconds(history), metadata=compile_metadata(loras, config, 1, seed),
                              compile_report=compile_report(server.log_since(mark)))
            except PromptFailed as error:
                record["error"] = str(error)[:2000]
            warmups.append(record)
            print(record, flush=True)
        for rnd in range(args.repeats):
            jobs = [("sampling", s) for s in args.sample_steps]
            for config in args.configs:
                counts = args.native_steps if CONFIGS[config].get("native") else args.steps
                jobs += [(config, s) for s in counts]
            for config, steps in jobs:
                seed += 1  # an identical prompt would come from ComfyUI's cache
                workflow = (sampling_workflow(family, names, steps, args.size, seed) if config == "sampling" else
                            training_workflow(family, names, config, steps, args.size, seed, str(images), native_info))
                record = {"config": config, "steps": steps, "round": rnd, "loadavg_before": os.getloadavg()[0]}
                before = status_kb(pid, "VmRSS")
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                try:
                    history = server.run(workflow, timeout=args.timeout)
                    record["exec_s"] = server.execution_seconds(history)
                    record["peak_above_resident_mb"] = (status_kb(pid, "VmHWM") - before) / 1024
                    record["metadata"] = compile_metadata(loras, config, steps, seed)
                except PromptFailed as error:
                    record["error"] = str(error)[:2000]
                record["loadavg_after"] = os.getloadavg()[0]
                runs.append(record)
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in record.items()}, flush=True)
    finally:
        server.stop()
    summary = summarise(runs)
    for w in warmups:
        if w["config"] in summary and "error" not in summary[w["config"]]:
            summary[w["config"]]["warmup"] = {k: w.get(k) for k in ("exec_s", "metadata", "compile_report")}
    print_table(summary, args.family)
    loads = [r[k] for r in runs for k in ("loadavg_before", "loadavg_after")]
    print(f"load average during the runs: {min(loads):.1f}-{max(loads):.1f} (2 cores: timings above ~2 are shared)")
    if args.json:
        import torch

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "checkpoint_modes", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                        "comfyui": os.environ.get("COMFYUI_PATH")},
            "setup": {"family": args.family, "size": args.size, "rank": RANK, "batch": 1, "precision": "fp32",
                      "steps": args.steps, "native_steps": args.native_steps, "sample_steps": args.sample_steps,
                      "allocator": allocator, "configs": {c: CONFIGS[c] for c in args.configs}},
            "warmups": warmups, "runs": runs, "summary": summary}, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
