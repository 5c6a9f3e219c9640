"""The files a `lora-lab train` run writes in output.dir, so that no run silently replaces another's.

    <name>.safetensors, <name>.diffusers.safetensors (per output.formats), <name>.state,
    <name>_loss.png (output.loss_plot), <name>_report.json      at the end
    <name>-stepNNNNNN + the same forms and .state                 every output.save_every steps
    <name>_stepNNNNN + the same forms and .state                  when a run stops early (NaN, out of memory,
                                                                  a crash, Ctrl-C); never overwritten: the next
                                                                  free <name>_stepNNNNN_00001, ... instead

The first two groups are checked before any model loads (existing_outputs): a second run of the same name
is refused unless output.overwrite. A resumed run only rewrites the periodic saves after its start.
"""

from __future__ import annotations

import re
from pathlib import Path

from .train_state import state_path

FORM_SUFFIXES = {"comfyui": ".safetensors", "diffusers": ".diffusers.safetensors"}


def lora_files(out_dir: Path, stem: str, formats: list[str]) -> list[Path]:
    """The LoRA in each form asked for, then the state beside it (what train_cli._save writes for `stem`)."""
    return [out_dir / f"{stem}{FORM_SUFFIXES[f]}" for f in FORM_SUFFIXES if f in formats] + \
        [state_path(out_dir / f"{stem}.safetensors")]


def periodic_stem(name: str, step: int) -> str:
    return f"{name}-step{step:06d}"


def final_outputs(out_dir: Path, name: str, formats: list[str], loss_plot: bool) -> list[Path]:
    return lora_files(out_dir, name, formats) + ([out_dir / f"{name}_loss.png"] if loss_plot else []) + \
        [out_dir / f"{name}_report.json"]


def existing_outputs(out_dir: Path, name: str, formats: list[str], loss_plot: bool, save_every: int, steps: int,
                     start_step: int = 0) -> list[Path]:
    """The files this run would write that already exist, sorted: the final outputs, and the periodic saves of
    the steps after start_step (one directory listing, however many periodic saves the run makes)."""
    if not out_dir.is_dir():
        return []
    final = {p.name for p in final_outputs(out_dir, name, formats, loss_plot)}
    suffixes = {FORM_SUFFIXES[f] for f in formats if f in FORM_SUFFIXES} | {".state"}
    periodic = re.compile(rf"{re.escape(name)}-step(\d+)(\..*)")

    def saved_by_this_run(filename: str) -> bool:
        match = periodic.fullmatch(filename)
        if not (save_every and match and match.group(2) in suffixes):
            return False
        step = int(match.group(1))
        return step % save_every == 0 and start_step < step < steps and \
            filename == periodic_stem(name, step) + match.group(2)

    return sorted(p for p in out_dir.iterdir() if p.name in final or saved_by_this_run(p.name))


def unused_partial_stem(out_dir: Path, name: str, step: int) -> str:
    """<name>_stepNNNNN, or <name>_stepNNNNN_00001, ... when any form or state of that name exists (as the node's
    partial saves do): a stopped run never replaces an earlier save."""
    base = f"{name}_step{step:05d}"
    stem, counter = base, 1
    while any(p.exists() for p in lora_files(out_dir, stem, list(FORM_SUFFIXES))):
        stem = f"{base}_{counter:05d}"
        counter += 1
    return stem
