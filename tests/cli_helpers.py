"""Shared by the `lora-lab train` tests: tiny pipeline folders (built once per session) and config files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tiny_folders import make_tiny_pipeline

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "examples" / "tiny_dataset"
_BUILT: dict[str, Path] = {}


def tiny_pipeline(family: str, root: Path) -> Path:
    """The tiny `family` pipeline folder (random weights, seed 0), built on first use in this session."""
    if family not in _BUILT:
        _BUILT[family] = make_tiny_pipeline(root / family, family)
    return _BUILT[family]


def write_config(path: Path, model_path: Path, out: Path, **sections: dict) -> Path:
    """A TOML config: the tiny dataset at 64 px and a short run; `sections` override/add keys per section."""
    tables = {
        "model": {"path": str(model_path)},
        "data": {"path": str(DATASET), "resolution": 64, "trigger_word": "rcircle"},
        "train": {"steps": 2, "batch_size": 2, "rank": 4, "alpha": 4.0, "learning_rate": 1e-2,
                  "targets": "attention_mlp", "seed": 0},
        "output": {"dir": str(out), "formats": ["comfyui", "diffusers"], "loss_plot": True},
    }
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def run_cli(args: list[str], processes: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m lora_lab train ...` in fresh processes: torchrun (gloo on the CPU) when processes > 1.

    One thread per process either way, so the one- and two-process runs differ only in how the batch is split."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WORLD_SIZE", None)
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29500 + os.getpid() % 1000), "-m", "lora_lab", "train", *args]
    else:
        cmd = [sys.executable, "-m", "lora_lab", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
