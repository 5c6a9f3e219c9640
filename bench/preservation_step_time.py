"""Step time of training with differential output preservation (DOP) against without, and where it goes.

DOP's step is the training term's forward and backward, plus one LoRA-off forward without grad (the target)
and one LoRA-on forward on the preservation captions whose backward is shared with the training term's (one
backward over the sum). In forward-equivalents, with B the cost of a backward (frozen base: about one forward),

    plain:  F + B            DOP:  F + B  +  F_no_grad  +  F + B_pres

so the ratio is about 2x-2.5x wherever a batch's cost scales with its rows (CPU); on GPUs that a small batch
leaves idle the added rows cost less. The script reports both steps and the pieces they are made of:

    python bench/preservation_step_time.py [--model tiny|sd15] [--steps 12] [--rounds 3] [--batch 1] [--json out.json]

tiny: the CLI's tiny diffusers UNet (torch only). sd15: the integration harness' random full-size SD1.5 through
Train LoRA's ComfyUI backend (needs COMFYUI_PATH and ComfyUI's python). Rounds alternate plain and DOP runs on
the same model, and each time is the median over a round's steps after its first (warm-up) step, so machine
load that drifts during the run hits both alike. Tests never assert on these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tiny_setup(batch: int):
    import torch

    from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
    from lora_lab.lora_core.cli.tiny_models import TinyTextEncoder, tiny_unet
    from lora_lab.lora_core.data.samples import TrainSample

    te, g = TinyTextEncoder(), torch.Generator().manual_seed(1)
    captions = [f"sks photo {i}" for i in range(max(4, batch))]
    samples = [TrainSample(torch.randn(4, 32, 32, generator=g), {"encoder_hidden_states": te(c)}, c) for c in captions]
    pres = [{"encoder_hidden_states": te(c.replace("sks", "dog"))} for c in captions]
    return DDPMUNetBackend(tiny_unet(seed=0).requires_grad_(False)), samples, pres, "tiny diffusers UNet, 32x32 latents"


def sd15_setup(batch: int):
    import torch

    from tests.integration.comfy_env import ensure_lora_lab_importable, import_comfy
    from tests.integration.comfy_inprocess import load_checkpoint
    from tests.integration.comfy_models import ensure_model

    import_comfy()
    ensure_lora_lab_importable(Path(tempfile.mkdtemp(prefix="lora_lab_bench_link_")))
    from lora_lab.lora_core.data.samples import TrainSample
    from lora_lab.nodes.comfy_backend import ComfyBackend, encode_sample_cond

    model, clip, _ = load_checkpoint(ensure_model("sd15"))
    patcher = model.clone()
    g = torch.Generator().manual_seed(1)

    def encoded(text, latent):
        return encode_sample_cond(patcher, clip.encode_from_tokens_scheduled(clip.tokenize(text)), latent, 0)

    latents = [torch.randn(4, 32, 32, generator=g) for _ in range(max(4, batch))]
    samples = [TrainSample(x, encoded(f"sks photo {i}", x), f"sks photo {i}") for i, x in enumerate(latents)]
    pres = [encoded(f"dog photo {i}", x) for i, x in enumerate(latents)]
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    return ComfyBackend(patcher), samples, pres, "random full-size SD1.5 through ComfyBackend, 256x256 images"


def step_times(backend, samples, pres, steps: int, batch: int, dop: bool) -> list[float]:
    from lora_lab.lora_core.training.preservation import Preservation, PreservationTerm
    from lora_lab.lora_core.training.trainer import TrainConfig, train

    stamps = [time.perf_counter()]
    config = TrainConfig(steps=steps, learning_rate=1e-4, rank=8, alpha=8.0, batch_size=batch, seed=0,
                         targets="attention")
    term = PreservationTerm("dop", 1.0, pres, {"class_word": "dog"}, [])
    train(backend, samples, config, on_step=lambda report: stamps.append(time.perf_counter()),
          preservation=Preservation([term]) if dop else None)
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]  # the first step (allocations, warm-up) left out


def pieces(backend, samples, batch: int, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one forward without grad, and one forward + backward, of a training batch."""
    import torch

    from lora_lab.lora_core.training.objective import diffusion_loss

    x0 = torch.stack([s.latent for s in samples[:batch]])
    conds, u = [s.cond for s in samples[:batch]], torch.full((batch,), 0.5)
    probe = torch.zeros((), requires_grad=True)  # something for backward to reach, as an adapter would

    def forward():
        with torch.no_grad():
            diffusion_loss(backend, x0, torch.randn_like(x0), u, conds)

    def forward_backward():
        x = (x0 + probe).requires_grad_()
        diffusion_loss(backend, x, torch.randn_like(x0), u, conds).mean().backward()

    out = {}
    with torch.inference_mode(False):
        for name, fn in (("forward_no_grad_s", forward), ("forward_backward_s", forward_backward)):
            fn()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            out[name] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    backend, samples, pres, what = (tiny_setup if args.model == "tiny" else sd15_setup)(args.batch)
    runs: dict[str, list[float]] = {"plain": [], "dop": []}
    for _ in range(args.rounds):
        for kind in ("plain", "dop"):
            runs[kind].append(statistics.median(step_times(backend, samples, pres, args.steps, args.batch, kind == "dop")))
    plain, dop = statistics.median(runs["plain"]), statistics.median(runs["dop"])
    result = {"model": what, "batch": args.batch, "threads": args.threads, "steps_per_run": args.steps,
              "rounds": args.rounds, "plain_step_s": plain, "dop_step_s": dop, "ratio": dop / plain,
              "per_round": runs, **pieces(backend, samples, args.batch)}
    print(json.dumps(result, indent=2))
    print(f"\n{what}, batch {args.batch}: step {plain * 1e3:.1f} ms without DOP, {dop * 1e3:.1f} ms with "
          f"(x{dop / plain:.2f}); forward without grad {result['forward_no_grad_s'] * 1e3:.1f} ms, "
          f"forward + backward {result['forward_backward_s'] * 1e3:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
