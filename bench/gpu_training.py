"""GPU training benchmarks. Needs a CUDA GPU and a ComfyUI; not run in CI.

  sdxl      SDXL-architecture UNet with random weights (harness kind "sdxl"), 1024x1024, rank 16, bf16,
            batch 1, default targets (attention), checkpointing on. Three runs, each in a fresh process:
              lora_lab  LoraLabTrain in a ComfyUI server
              native    ComfyUI's TrainLoraNode, its best settings (bypass, offloading, checkpointing)
              peft      a plain diffusers UNet2DConditionModel + PEFT LoRA loop (same config, same steps)
            Reports s/it (slope between two step counts) and peak VRAM (nvidia-smi, polled every 50 ms).
  flux_fp8  full-size Flux-dev-architecture transformer with random weights stored in fp8, ComfyUI started with
            --reserve-vram so that it keeps within 16 GB: LoraLabTrain trains through partial loading.
            Reports s/it and peak VRAM.

    COMFYUI_PATH=... $COMFYUI_PATH/.venv/bin/python bench/gpu_training.py sdxl [--steps 4 12]
    COMFYUI_PATH=... $COMFYUI_PATH/.venv/bin/python bench/gpu_training.py flux_fp8 [--vram-gb 16]
Results go to bench/results/gpu_<what>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.comfy_models import ensure_model  # noqa: E402
from tests.integration.comfy_server import start_server  # noqa: E402
from tests.integration.sample_data import make_image_folder  # noqa: E402
from tests.integration.workflows import (Graph, lora_lab_train_nodes, native_train_workflow,  # noqa: E402
                                         train_only_workflow)


class VramPeak:
    """Peak GPU memory in use (MiB) over a block, from nvidia-smi: valid for another process too."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                self.peak = max(self.peak, int(out[0]))
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _timed_server_run(work: Path, model_dirs: dict, workflow, extra_args: list[str]) -> dict:
    """workflow: an API dict, or a function of the started server returning one (native inputs vary by version)."""
    server = start_server(work, model_dirs, {"lora_lab": REPO}, extra_args=extra_args, cpu=False, timeout=900)
    try:
        workflow = workflow(server) if callable(workflow) else workflow
        with VramPeak() as vram:
            history = server.run(workflow, timeout=7200)
        return {"exec_s": server.execution_seconds(history), "peak_vram_mib": vram.peak}
    finally:
        server.stop()


def _slope(lo: dict, hi: dict, steps: tuple[int, int]) -> float:
    return (hi["exec_s"] - lo["exec_s"]) / (steps[1] - steps[0])


def bench_sdxl(steps: tuple[int, int]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="lora_lab_gpu_sdxl_"))
    ckpt = ensure_model("sdxl")
    images = make_image_folder(work / "images", count=4, size=1024)
    dirs = {"checkpoints": [ckpt.parent], "loras": [work / "loras"]}
    ours = {"rank": 16, "alpha": 16.0, "precision": "bf16", "gradient_checkpointing": True, "learning_rate": 1e-4}
    native = {"rank": 16, "training_dtype": "bf16", "lora_dtype": "bf16", "gradient_checkpointing": True,
              "bypass_mode": True, "offloading": True, "learning_rate": 1e-4}
    runs: dict[str, dict] = {}
    for n in steps:
        runs[f"lora_lab_{n}"] = _timed_server_run(work / f"ours{n}", dirs, train_only_workflow(
            ckpt.name, str(images), dict(ours, steps=n), dataset_inputs={"resolution": 1024}), [])
        shutil.copytree(images, work / f"native{n}" / "input" / "set")  # the native loader reads input/<folder>
        runs[f"native_{n}"] = _timed_server_run(work / f"native{n}", dirs, lambda server, n=n: native_train_workflow(
            ckpt.name, "set", dict(native, steps=n), node_info=server.object_info("TrainLoraNode")), [])
        runs[f"peft_{n}"] = _peft_loop(n)
    result = {name: {"s_per_it": _slope(runs[f"{name}_{steps[0]}"], runs[f"{name}_{steps[1]}"], steps),
                     "peak_vram_mib": max(runs[f"{name}_{s}"]["peak_vram_mib"] for s in steps)}
              for name in ("lora_lab", "native", "peft")}
    return {"runs": runs, "summary": result}


# diffusers' SDXL base UNet configuration (random weights: nothing is downloaded)
SDXL_DIFFUSERS_CONFIG = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048, "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20], "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}


def _peft_loop(steps: int) -> dict:
    """diffusers + PEFT, the textbook loop, in a child process so its VRAM is its own."""
    code = f"""
import json, time, torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
unet = UNet2DConditionModel(**{SDXL_DIFFUSERS_CONFIG!r}).to("cuda", torch.bfloat16).requires_grad_(False)
unet.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
unet.enable_gradient_checkpointing()
params = [p for p in unet.parameters() if p.requires_grad]
for p in params: p.data = p.data.float()
opt = torch.optim.AdamW(params, lr=1e-4)
x = torch.randn(1, 4, 128, 128, device="cuda")
ctx, pooled = torch.randn(1, 77, 2048, device="cuda"), torch.randn(1, 1280, device="cuda")
added = {{"text_embeds": pooled, "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]], device="cuda")}}
torch.cuda.synchronize(); start = time.time()
for _ in range({steps}):
    with torch.autocast("cuda", torch.bfloat16):
        out = unet(x, torch.tensor([500], device="cuda"), ctx, added_cond_kwargs=added).sample
    out.float().pow(2).mean().backward(); opt.step(); opt.zero_grad()
torch.cuda.synchronize()
print(json.dumps({{"exec_s": time.time() - start, "peak_vram_mib": torch.cuda.max_memory_reserved() / 2**20}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_flux_fp8(steps: tuple[int, int], vram_gb: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="lora_lab_gpu_flux_"))
    unet, clip, vae = ensure_model("flux_dev_fp8", timeout=7200), ensure_model("clip_l"), ensure_model("flux_vae")
    images = make_image_folder(work / "input" / "set", count=4, size=1024)
    dirs = {"diffusion_models": [unet.parent], "text_encoders": [clip.parent], "vae": [vae.parent], "loras": [work / "loras"]}
    import torch

    reserve = torch.cuda.get_device_properties(0).total_memory / 2**30 - vram_gb
    runs = {}
    for n in steps:
        g = Graph()
        model = g.add("UNETLoader", unet_name=unet.name, weight_dtype="fp8_e4m3fn")[0]
        clip_out = g.add("CLIPLoader", clip_name=clip.name, type="stable_diffusion")[0]
        vae_out = g.add("VAELoader", vae_name=vae.name)[0]
        train = lora_lab_train_nodes(g, model, clip_out, vae_out, str(images),
                                     {"steps": n, "rank": 16, "alpha": 16.0, "precision": "bf16"}, {"resolution": 1024})
        g.add("LoraLabSaveLora", lora=train[1], name=f"flux_fp8_{n}")
        runs[n] = _timed_server_run(work / f"run{n}", dirs, g.api(), ["--reserve-vram", f"{reserve:.1f}"])
    return {"runs": runs, "summary": {"s_per_it": _slope(runs[steps[0]], runs[steps[1]], steps),
                                      "peak_vram_mib": max(r["peak_vram_mib"] for r in runs.values()),
                                      "vram_budget_gb": vram_gb}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["sdxl", "flux_fp8"])
    parser.add_argument("--steps", type=int, nargs=2, default=[4, 12])
    parser.add_argument("--vram-gb", type=float, default=16.0)
    args = parser.parse_args(argv)
    result = bench_sdxl(tuple(args.steps)) if args.what == "sdxl" else bench_flux_fp8(tuple(args.steps), args.vram_gb)
    out = REPO / "bench" / "results" / f"gpu_{args.what}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
