"""`lora-lab demo`: train a LoRA on the bundled tiny dataset end to end on the CPU, with no downloads.

Tiny random (seeded) diffusers models stand in for SD1.5: an AutoencoderKL encodes the 64x64 images,
a tokenizer-free text encoder embeds each caption, a UNet2DConditionModel with an eps DDPM schedule is
trained through the same `train()` the ComfyUI nodes use. The LoRA is written in kohya format, reloaded
from the file and applied at several strengths to show its effect.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch

from ..data.captions import tag_frequency
from ..adapters.algorithms import adapter_from_weights
from ..files.atomic import atomic_write_bytes
from ..data.dataset import load_image_folder
from .diffusers_backend import DDPMUNetBackend
from ..errors import LoraLabError
from ..exit_status import EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from ..adapters.injection import attached
from ..files.lora_file import load_lora_file, save_lora_file, training_metadata
from ..adapters.lora_weights import LoraWeights
from ..files.loss_plot import plot_losses
from ..training.objective import diffusion_loss
from .tiny_models import TinyTextEncoder, tiny_unet, tiny_vae
from ..training.trainer import TrainConfig, train
from ..data.samples import TrainSample

DATASET = Path(__file__).resolve().parents[2] / "examples" / "tiny_dataset"  # the pack root's examples/
TRIGGER = "rcircle"
STRENGTHS = (0.0, 0.5, 1.0, -1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("lora_lab_demo"), help="output folder (default ./lora_lab_demo)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps (default 150)")
    parser.add_argument("--seed", type=int, default=0, help="seed for models and training (default 0)")
    parser.add_argument("--dataset", type=Path, default=DATASET, help="image folder (default: the bundled tiny dataset)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        run_demo(args.out, steps=args.steps, seed=args.seed, dataset=args.dataset, log=print)
    except LoraLabError as e:  # bad dataset folder, bad --steps: refused before anything is written
        print(f"lora-lab demo: error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as e:  # the output folder cannot be written
        print(f"lora-lab demo: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


@torch.no_grad()
def encode_images(vae: torch.nn.Module, pixels: list[torch.Tensor]) -> torch.Tensor:
    """(N, 4, h/8, w/8) latents: VAE posterior means, scaled to unit std as SD's scaling_factor does."""
    x = torch.stack([p.permute(2, 0, 1) for p in pixels]) * 2 - 1  # ComfyUI IMAGE (H,W,3) in [0,1] -> [-1,1]
    latents = vae.encode(x).latent_dist.mean
    return latents / latents.std()


def build_samples(dataset_dir: Path, seed: int) -> tuple[list[TrainSample], list[str], int]:
    dataset = load_image_folder(dataset_dir, 64, trigger_word=TRIGGER)
    latents = encode_images(tiny_vae(seed), [img.pixels for img in dataset.images])
    text = TinyTextEncoder(dim=32, seed=seed)
    samples = []
    for img, latent in zip(dataset.images, latents):
        cond = {"encoder_hidden_states": text(img.caption)}
        samples += [TrainSample(latent, cond, img.caption)] * img.repeats  # kohya "N_name" folders repeat images
    return samples, [img.caption for img in dataset.images], len(dataset.images)


def eval_loss(backend: DDPMUNetBackend, samples: list[TrainSample]) -> float:
    """Training-set loss at fixed noise levels with fixed noise: comparable across strengths."""
    gen = torch.Generator().manual_seed(1234)
    x0, conds = torch.stack([s.latent for s in samples]), [s.cond for s in samples]
    total = 0.0
    for u in (0.1, 0.3, 0.5, 0.7, 0.9):
        noise = torch.randn(x0.shape, generator=gen)
        total += float(diffusion_loss(backend, x0, noise, torch.full((len(samples),), u), conds).mean())
    return total / 5


@torch.no_grad()
def strength_sweep(backend: DDPMUNetBackend, lora: LoraWeights, samples: list[TrainSample]) -> list[dict]:
    """Apply the LoRA at each strength: training-set loss and how far the UNet output moves."""
    modules = dict(backend.root.named_modules())
    adapters = {name: adapter_from_weights(modules[name], w) for name, w in lora.modules.items()}
    x0 = torch.stack([s.latent for s in samples])
    x_t = x0 + 2.0 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(99))
    sigma = torch.full((len(samples),), 2.0)
    conds = [s.cond for s in samples]
    base = backend.denoise(x_t, sigma, conds)
    rows = []
    with attached(backend.root, adapters) as lora_on:
        for strength in STRENGTHS:
            lora_on.multiplier = strength
            change = (backend.denoise(x_t, sigma, conds) - base).norm() / base.norm()
            rows.append({"strength": strength, "eval_loss": eval_loss(backend, samples), "output_change": float(change)})
    return rows


def run_demo(out_dir: Path, steps: int = 150, seed: int = 0, dataset: Path = DATASET, log=print) -> dict:
    """Train, save, reload, sweep strengths. Returns the report (also written to out_dir/report.json)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    samples, captions, n_images = build_samples(Path(dataset), seed)
    unet = tiny_unet(seed).requires_grad_(False)
    backend = DDPMUNetBackend(unet, prediction="eps")
    config = TrainConfig(steps=steps, learning_rate=3e-3, rank=8, alpha=8.0, targets="attention_mlp", batch_size=2,
                         lr_schedule="cosine", warmup_steps=max(1, steps // 20), seed=seed)
    log(f"LoRA Lab demo: {n_images} images ({len(samples)} with repeats), {steps} steps, rank {config.rank}, "
        f"targets {config.targets!r}, tiny SD-style UNet ({sum(p.numel() for p in unet.parameters()):,} params)")
    every = max(1, steps // 10)
    result = train(backend, samples, config,
                   on_step=lambda r: log(f"  step {r.step:4d}/{r.total}  loss {r.loss:.4f}") if r.step % every == 0 else None)
    train_s = time.perf_counter() - start

    lora_path = out_dir / "demo_lora.safetensors"
    meta = training_metadata(
        family="sd15", rank=config.rank, alpha=config.alpha, learning_rate=config.learning_rate, max_steps=steps,
        steps_done=result.steps_done, num_images=n_images, batch_size=config.batch_size, lr_schedule=config.lr_schedule,
        warmup_steps=config.warmup_steps, seed=seed, targets=config.targets, prediction=backend.prediction,
        output_name="demo_lora", trigger_words=[TRIGGER], tag_frequency=tag_frequency(captions), resolution=(64, 64),
        comment="lora-lab demo: tiny random models, not a usable SD1.5 LoRA",
    )
    save_lora_file(lora_path, result.lora.kohya_state_dict(), meta)
    plot_path = out_dir / "loss.png"
    buffer = io.BytesIO()
    plot_losses(result.losses, title=f"LoRA Lab demo: loss per step ({steps} steps)").save(buffer, format="PNG")
    atomic_write_bytes(plot_path, buffer.getvalue())

    tensors, _ = load_lora_file(lora_path)  # reload from the file: what a user would get
    reloaded = LoraWeights.from_kohya_state_dict(tensors, [n for n, _ in unet.named_modules()])
    sweep = strength_sweep(backend, reloaded, samples)
    report = {
        "images": n_images, "samples": len(samples), "steps": result.steps_done, "modules": len(result.lora.modules),
        "first_loss": result.losses[0], "last_loss": result.losses[-1], "strengths": sweep,
        "lora": str(lora_path), "loss_plot": str(plot_path), "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=2).encode())
    _print_report(report, log)
    return report


def _print_report(report: dict, log) -> None:
    log(f"trained {report['modules']} LoRA modules in {report['train_seconds']} s; "
        f"loss {report['first_loss']:.4f} (step 1) -> {report['last_loss']:.4f} (step {report['steps']})")
    log("LoRA reloaded from the file and applied at each strength:")
    log("  strength   train-set loss   UNet output change (relative to strength 0)")
    for row in report["strengths"]:
        log(f"  {row['strength']:+8.1f}   {row['eval_loss']:14.4f}   {row['output_change']:10.4f}")
    log(f"wrote {report['lora']} and {report['loss_plot']} ({report['total_seconds']} s total)")
