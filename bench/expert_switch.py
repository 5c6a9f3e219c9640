"""How often a two-expert run (Wan 2.2 A14B) switches experts: in the order steps are drawn, and in the order
lora_core/training/experts.py runs them (window by window, SWITCH_WINDOW steps each).

Every switch asks ComfyUI's memory manager to bring the other expert onto the device (and, where both do not fit,
to offload the one in use), so the count of switches times the cost of one load is what two experts add to a run.
The schedule is the one train_experts draws (draw_schedule, the run's seed alone), on Wan's flow sampling
(sigma = shift u / (1 + (shift - 1) u)) with logit-normal levels, as Train LoRA's auto sampling does for Wan.

    PYTHONPATH=<folder holding lora_lab> python bench/expert_switch.py [--steps 500 2000] [--seeds 0 1 2] [--boundary 0.875] [--shift 8] [--json F]

Pure CPU, no model: it measures counts, not the seconds a switch costs on a given device.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import torch

from lora_lab.lora_core.files.atomic import atomic_write_bytes
from lora_lab.lora_core.training.experts import SWITCH_WINDOW, draw_schedule, execution_order
from lora_lab.lora_core.training.trainer import TrainConfig


class WanSampling:
    """The part of a Backend draw_schedule reads: Wan's shifted flow sigma, whose timestep is sigma itself."""

    def __init__(self, shift: float):
        self.shift = shift

    def sigma_from_u(self, u: torch.Tensor) -> torch.Tensor:
        u = u.float()
        return self.shift * u / (1 + (self.shift - 1) * u)

    def timestep_fraction(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.float()


def switches(sequence: list[str]) -> int:
    return sum(a != b for a, b in itertools.pairwise(sequence))


def measure(steps: int, seed: int, boundary: float, shift: float, window: int) -> dict:
    config = TrainConfig(steps=steps, learning_rate=1e-4, rank=4, alpha=4.0, seed=seed,
                         timestep_sampling="logit_normal")
    experts = draw_schedule(WanSampling(shift), config, boundary, steps).experts
    ran = [experts[i] for i in execution_order(experts, window)]
    return {"steps": steps, "seed": seed, "high_noise_steps": experts.count("high_noise"),
            "switches_drawn_order": switches(experts), "switches_run_order": switches(ran)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--boundary", type=float, default=0.875, help="Wan 2.2 T2V's (I2V: 0.9)")
    parser.add_argument("--shift", type=float, default=8.0, help="ComfyUI's Wan sampling shift")
    parser.add_argument("--window", type=int, default=SWITCH_WINDOW)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [measure(n, s, args.boundary, args.shift, args.window) for n in args.steps for s in args.seeds]
    print(f"boundary {args.boundary}, shift {args.shift}, window {args.window}, logit-normal levels")
    print(f"{'steps':>6} {'seed':>4} {'high':>6} {'switches drawn':>15} {'switches run':>13}")
    for r in rows:
        print(f"{r['steps']:>6} {r['seed']:>4} {r['high_noise_steps']:>6} {r['switches_drawn_order']:>15} "
              f"{r['switches_run_order']:>13}")
    for n in args.steps:
        mine = [r for r in rows if r["steps"] == n]
        drawn = statistics.mean(r["switches_drawn_order"] for r in mine)
        ran = statistics.mean(r["switches_run_order"] for r in mine)
        print(f"{n} steps: {drawn:.1f} switches as drawn, {ran:.1f} as run ({drawn / max(ran, 1):.1f}x fewer)")
    if args.json:
        summary = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
        atomic_write_bytes(args.json, json.dumps(summary, indent=1).encode())


if __name__ == "__main__":
    main()
