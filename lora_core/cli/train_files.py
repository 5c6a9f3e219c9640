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

import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..adapters.lora_weights import LoraWeights
from ..data.captions import tag_frequency
from ..data.dataset_metadata import pairs_metadata
from ..errors import LoraLabError
from ..files.atomic import atomic_write_bytes
from ..files.lora_file import algorithm_metadata, save_lora_file, training_metadata
from ..training.state import save_train_state, state_path
from ..training.run import TrainResult
from .config import RunConfig
from .model_folders import ModelFolder

# output.formats name -> (lora, family, component) -> (tensors, metadata to add): converters.trained_lora.FORMS,
# handed in by the caller (lora_core does not import the converters)
Forms = Mapping[str, Callable[[LoraWeights, str, str], "tuple[dict[str, Any], dict[str, str]]"]]

FORM_SUFFIXES = {"comfyui": ".safetensors", "diffusers": ".diffusers.safetensors"}


def lora_files(out_dir: Path, stem: str, formats: list[str]) -> list[Path]:
    """The LoRA in each form asked for, then the state beside it (what RunFiles.save writes for `stem`)."""
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


def clock() -> float:
    """Now, or $SOURCE_DATE_EPOCH where set (the reproducible-builds convention): the LoRA's ss_training_*_at
    timestamps are the only bytes that differ between two runs of the same config, seed and data."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return float(fixed) if fixed else time.time()


@dataclass
class RunFiles:
    """What one run writes into output.dir (rank 0 only): each LoRA form and its state, the loss plot, the report."""

    config: RunConfig
    folder: ModelFolder
    forms: Forms
    dataset: Any
    prediction: str
    started: float
    first_frame: str | None = None  # i2v_models' kind ("concat", "latent") or None

    @property
    def out_dir(self) -> Path:
        return Path(self.config.output.dir).expanduser()

    def save(self, result: TrainResult, stem: str) -> list[Path]:
        """<stem> in each output form and its state (first); the paths written."""
        t, d, folder = self.config.train, self.config.data, self.folder
        resolution = (d.resolution, d.resolution) if isinstance(d.resolution, int) else tuple(d.resolution)
        meta = training_metadata(
            family=folder.family, rank=t.rank, alpha=t.alpha, learning_rate=t.learning_rate, max_steps=t.steps,
            steps_done=result.steps_done, num_images=len(self.dataset.images), batch_size=t.batch_size,
            grad_accum=t.grad_accum, lr_schedule=t.lr_schedule, warmup_steps=t.warmup_steps, seed=t.seed,
            precision=t.precision, dropout=t.dropout, targets=t.targets, prediction=self.prediction, output_name=stem,
            trigger_words=[d.trigger_word], tag_frequency=tag_frequency(self.dataset.captions()),
            resolution=resolution, compute_dtype=result.compute_dtype, timestep_sampling=t.timestep_sampling,
            started_at=self.started, finished_at=clock(), gradient_checkpointing=result.checkpointing, compile=result.compiled,
            comment=f"lora-lab train on {folder.root.name} ({folder.cls})")
        meta.update(algorithm_metadata(t))
        if self.first_frame:  # an image-to-video LoRA: how each clip's first frame conditioned the model
            meta["lora_lab_first_frame"] = self.first_frame
        if self.dataset.pairs is not None:  # an edit LoRA: how its references were given (as the node writes it)
            meta["lora_lab_pairs"] = json.dumps(pairs_metadata(self.dataset), sort_keys=True)
        state = []  # first: a LoRA form that cannot be written must not lose the run
        if result.state is not None:
            state.append(save_train_state(state_path(self.out_dir / f"{stem}.safetensors"), result.state))
        written = []
        for form in (f for f in FORM_SUFFIXES if f in self.config.output.formats):
            tensors, extra = self.forms[form](result.lora, folder.family, folder.component)
            written.append(save_lora_file(self.out_dir / f"{stem}{FORM_SUFFIXES[form]}", tensors, {**meta, **extra}))
        return written + state

    def keep(self, result: TrainResult | None) -> tuple[list[Path], str]:
        """Save a stopped run's last completed step as <name>_stepNNNNN, never replacing a file:
        (the files written, why nothing or not everything was)."""
        if result is None:  # struck inside an optimizer update: the reason says why nothing is kept from memory
            return [], "Nothing was saved."
        if result.steps_done == 0:
            return [], "No step was completed, so nothing was saved."
        formats = self.config.output.formats
        stem = unused_partial_stem(self.out_dir, self.config.output.name, result.steps_done)
        try:
            return self.save(result, stem), ""
        except (LoraLabError, OSError) as error:
            kept = [p for p in lora_files(self.out_dir, stem, formats) if p.is_file()]
            return kept, f"Saving the LoRA after step {result.steps_done} failed too: {error}"

    def report(self, result: TrainResult, step_seconds: list[float], validation: list, world_size: int) -> None:
        """<name>_loss.png (output.loss_plot) and <name>_report.json; warnings also on stderr."""
        name, out = self.config.output.name, self.out_dir
        if self.config.output.loss_plot and result.losses:
            from ..files.loss_plot import plot_losses

            buffer = io.BytesIO()
            plot_losses(result.losses, title=f"{name}: loss per step", validation=validation).save(buffer, format="PNG")
            atomic_write_bytes(out / f"{name}_loss.png", buffer.getvalue())
        report = {"steps": result.steps_done, "losses": result.losses, "validation": validation,
                  "world_size": world_size, "global_batch": self.config.train.batch_size,
                  "step_seconds": step_seconds, "warnings": result.warnings}
        for warning in result.warnings:
            print(f"lora-lab train: warning: {warning}", file=sys.stderr)
        atomic_write_bytes(out / f"{name}_report.json", json.dumps(report, indent=1).encode())
