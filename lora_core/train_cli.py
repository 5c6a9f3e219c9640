"""`lora-lab train CONFIG.toml [flags]`: train a LoRA on a local diffusers model, in one process or many.

    lora-lab train run.toml --steps 2000 --set train.rank=32
    torchrun --nproc_per_node 4 -m lora_lab train run.toml          (or: accelerate launch -m lora_lab train run.toml)

A thin layer over lora_core: the schema is train_config.py, the model loading model_folders.py, the
multi-process parts distributed.py, the output names train_files.py, early stops train_stops.py; the loop
below only wires the dataset, the trainer and the outputs. Every check that can fail on the configuration,
and the refusal to replace an earlier run's files, runs before any model loads. A run that stops early
(NaN, out of memory, a crash, Ctrl-C) saves its last completed step and says how to resume it.
Exit status: lora_core/exit_status.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes
from .buckets import BucketConfig
from .distributed import Distributed, init_from_env, launched_world_size, shutdown
from .encoding_cache import EncodingCache
from .errors import LoraLabError, NonFiniteLossError, TrainingCrashed, TrainingError, TrainingOutOfMemory
from .exit_status import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED
from .lora_file import algorithm_metadata, training_metadata
from .model_folders import ModelFolder, check_family, check_parts, inspect_folder, load_model
from .train_config import ConfigError, RunConfig, check_world_size, load_config
from .train_files import existing_outputs, lora_files, periodic_stem, unused_partial_stem
from .train_outputs import write_lora
from .train_state import load_train_state, read_state_step, save_train_state, state_path
from .train_stops import CtrlC, RunStopped
from .trainer import StepReport, TrainResult, train
from .training_samples import build_training_data

# shortcut flag -> config key
SHORTCUTS = {"model": "model.path", "family": "model.family", "data": "data.path", "out": "output.dir",
             "name": "output.name", "steps": "train.steps", "seed": "train.seed", "resume": "output.resume"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", type=Path, help="TOML file ([model], [data], [train], [output])")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key (TOML value syntax), e.g. --set train.rank=32; repeatable")
    for flag, key in SHORTCUTS.items():
        parser.add_argument(f"--{flag}", default=None, help=f"same as --set {key}=...")
    parser.add_argument("--overwrite", action="store_true", help="replace the files an earlier run of this name "
                        "wrote in the output folder (same as --set output.overwrite=true); without it such a run "
                        "is refused before any model loads")
    parser.set_defaults(run=_run)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if flag not in ('steps', 'seed') else value}")
    if args.overwrite:
        out.append("output.overwrite=true")
    return out


def _resume_command(args: argparse.Namespace, state: Path) -> str:
    """The command line that continues this run from `state`: the same config and flags, --resume replaced."""
    words = ["lora-lab", "train"] + ([str(args.config)] if args.config is not None else [])
    for item in args.overrides:
        words += ["--set", item]
    for flag in SHORTCUTS:
        if flag != "resume" and getattr(args, flag) is not None:
            words += [f"--{flag}", str(getattr(args, flag))]
    return shlex.join(words + (["--overwrite"] if args.overwrite else []) + ["--resume", str(state)])


def preflight(config: RunConfig, world_size: int) -> ModelFolder:
    """Every configuration error, before any weights load."""
    check_world_size(config, world_size)
    folder = inspect_folder(config.model.path)
    check_family(folder, config.model.family)
    check_parts(folder, config.model.text_encoder)
    data = Path(config.data.path).expanduser()
    if not data.is_dir():
        raise ConfigError(f"{config.source}: data.path {data} is not a folder")
    start_step = 0
    if config.output.resume:
        resume = Path(config.output.resume).expanduser()
        if not resume.is_file():
            raise ConfigError(f"{config.source}: output.resume {config.output.resume} does not exist")
        try:
            start_step = read_state_step(resume)
        except TrainingError as error:
            raise ConfigError(f"{config.source}: output.resume: {error}") from None
    check_outputs(config, start_step)
    if config.output.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ConfigError(f"{config.source}: output.tensorboard needs the tensorboard package "
                              "(pip install tensorboard)") from None
    return folder


def check_outputs(config: RunConfig, start_step: int = 0) -> None:
    """Unless output.overwrite: no file the run would write may exist (a second run of a name replaces nothing)."""
    o = config.output
    if o.overwrite:
        return
    existing = existing_outputs(Path(o.dir).expanduser(), o.name, o.formats, o.loss_plot, o.save_every,
                                config.train.steps, start_step)
    if existing:
        more = f" (and {len(existing) - 1} more file(s) this run would write)" if len(existing) > 1 else ""
        raise ConfigError(f"{config.source}: {existing[0]} exists{more}: an earlier run named {o.name!r} wrote it; "
                          "pass --overwrite to replace it, or give another --name")


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, _overrides(args))
        folder = preflight(config, launched_world_size())
    except LoraLabError as error:
        print(f"lora-lab train: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    dist = init_from_env()
    try:
        run_training(config, folder, dist)
    except RunStopped as stop:
        if dist is None or dist.is_main:
            resume = "" if stop.state is None else f"\nresume with: {_resume_command(args, stop.state)}" + (
                " (under the same torchrun / accelerate launch)" if dist is not None else "")
            print(f"lora-lab train: {stop}{resume}", file=sys.stderr)
        return stop.status
    except (LoraLabError, OSError) as error:  # loading, encoding or writing the outputs
        print(f"lora-lab train: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # outside the training loop (loading, encoding, writing)
        print("lora-lab train: interrupted; nothing more was saved (files already written stand)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        shutdown(dist)
    return EXIT_OK


def _device(config: RunConfig, dist: Distributed | None) -> torch.device:
    if dist is not None:
        return dist.device
    from .devices import default_device

    if config.model.device != "auto":
        return torch.device(config.model.device)
    return default_device()  # cuda, xpu, mps, else cpu


def _dataset(config: RunConfig):
    d = config.data
    common = dict(trigger_word=d.trigger_word, default_caption=d.default_caption, caption_extension=d.caption_extension,
                  buckets=BucketConfig(d.resolution if isinstance(d.resolution, int) else tuple(d.resolution),
                                       d.buckets.min_side, d.buckets.max_side, d.buckets.step) if d.buckets.enabled else None,
                  caption_template=d.caption_template, small_images=d.small_images, validation=d.validation,
                  caption_transforms=d.captions, augment=d.augment, cache_folder=d.cache_folder or None)
    resolution = d.resolution if isinstance(d.resolution, int) else tuple(d.resolution)
    if d.video.enabled:
        from .video_dataset import load_video_folder

        v = d.video
        return load_video_folder(d.path, resolution, v.frames, v.frame_sampling, v.target_fps, v.clips_per_video,
                                 include_images=v.include_images, **common)
    from .dataset import load_image_folder

    return load_image_folder(d.path, resolution, **common)


def _training_data(config: RunConfig, dataset, model, dist: Distributed | None):
    """Rank 0 encodes first (into the disk cache, if any); the other ranks then read what it wrote."""
    def build():
        cache = EncodingCache(dataset.cache_folder)
        with torch.no_grad():
            return build_training_data(dataset, model.encoders, cache, seed=config.train.seed,
                                       batch_size=config.train.batch_size)
    if dist is None or dataset.cache_folder is None:
        return build()
    data = build() if dist.is_main else None
    dist.barrier()
    return data if data is not None else build()


class _Progress:
    """tqdm bar, optional TensorBoard, step times (rank 0)."""

    def __init__(self, config: RunConfig, out_dir: Path, start_step: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=config.train.steps, initial=start_step, desc="lora-lab train", unit="step")
        self.writer = None
        if config.output.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        self.times: list[float] = []
        self.last = time.perf_counter()

    def step(self, report: StepReport) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{report.loss:.4f}", lr=f"{report.lr:.2e}")
        if self.writer is not None:
            self.writer.add_scalar("loss", report.loss, report.step)
            self.writer.add_scalar("lr", report.lr, report.step)
            if report.val_loss is not None:
                self.writer.add_scalar("val_loss", report.val_loss, report.step)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def run_training(config: RunConfig, folder: ModelFolder, dist: Distributed | None = None) -> TrainResult:
    main = dist is None or dist.is_main
    out_dir = Path(config.output.dir).expanduser()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    started = _clock()
    m = config.model
    model = load_model(folder, m.dtype, _device(config, dist), m.text_encoder, m.prediction, m.shift)
    dataset = _dataset(config)
    data = _training_data(config, dataset, model, dist)
    if not dataset.caption_transforms.active:
        model.release_text_encoders()
    resume = load_train_state(config.output.resume) if config.output.resume else None
    validate = None
    if data.validation and main:
        from .validation import ValidationLoss

        every = config.data.validate_every or max(1, config.train.steps // 10)
        validate = ValidationLoss(model.backend, data.validation, every, last_step=config.train.steps,
                                  seed=config.train.seed, batch_size=config.train.batch_size,
                                  precision=config.train.precision)
    progress = _Progress(config, out_dir, resume.step if resume else 0) if main else None
    name = config.output.name

    def on_step(report: StepReport) -> None:
        if progress is not None:
            progress.step(report)
        snapshot = getattr(report, "snapshot", None)
        every = config.output.save_every
        if main and every and report.step % every == 0 and report.step < report.total and snapshot is not None:
            _save(config, folder, dataset, model, snapshot(), out_dir, periodic_stem(name, report.step), started)

    ctrl_c = CtrlC()

    def should_stop() -> bool:  # every rank stops before the same step
        return ctrl_c.requested if dist is None else dist.mean(float(ctrl_c.requested)) > 0

    def stopped(error: TrainingError | None, kept: TrainResult | None) -> RunStopped:
        saved, why_nothing = _keep(config, folder, dataset, model, kept, out_dir, started) if main else ([], "")
        if dist is not None and (error is None or isinstance(error, NonFiniteLossError)):
            dist.barrier()  # every rank stopped at the same step: the others wait until rank 0 has saved it
        reason, status = ("interrupted (Ctrl-C)", EXIT_INTERRUPTED) if error is None else (str(error), EXIT_FAILED)
        return RunStopped(reason, status, kept.steps_done if kept else 0, saved, why_nothing)

    try:
        with ctrl_c:
            result = train(model.backend, data.samples, config.train, order=data.order, resume=resume,
                           on_step=on_step, should_stop=should_stop, validate=validate, distributed=dist)
    except (NonFiniteLossError, TrainingOutOfMemory, TrainingCrashed) as error:
        kept, error.result = error.result, None  # the traceback should not keep the run's tensors alive
        raise stopped(error, kept) from error
    finally:
        if progress is not None:
            progress.close()
    if result.interrupted:
        raise stopped(None, result)
    if main:
        _save(config, folder, dataset, model, result, out_dir, name, started)
        _report(config, result, progress, validate, out_dir, name, dist)
    if dist is not None:
        dist.barrier()  # the others wait until rank 0 has written
    return result


def _keep(config: RunConfig, folder: ModelFolder, dataset, model, result: TrainResult | None, out_dir: Path,
          started: float) -> tuple[list[Path], str]:
    """Save a stopped run's last completed step as <name>_stepNNNNN, never replacing a file:
    (the files written, why nothing or not everything was)."""
    if result is None:  # struck inside an optimizer update: the reason says why nothing is kept from memory
        return [], "Nothing was saved."
    if result.steps_done == 0:
        return [], "No step was completed, so nothing was saved."
    stem = unused_partial_stem(out_dir, config.output.name, result.steps_done)
    try:
        return _save(config, folder, dataset, model, result, out_dir, stem, started), ""
    except (LoraLabError, OSError) as error:
        kept = [p for p in lora_files(out_dir, stem, config.output.formats) if p.is_file()]
        return kept, f"Saving the LoRA after step {result.steps_done} failed too: {error}"


def _save(config: RunConfig, folder: ModelFolder, dataset, model, result: TrainResult, out_dir: Path, name: str,
          started: float) -> list[Path]:
    """<name> in each output form and its state (first); the paths written."""
    t, d = config.train, config.data
    resolution = (d.resolution, d.resolution) if isinstance(d.resolution, int) else tuple(d.resolution)
    meta = training_metadata(
        family=folder.family, rank=t.rank, alpha=t.alpha, learning_rate=t.learning_rate, max_steps=t.steps,
        steps_done=result.steps_done, num_images=len(dataset.images), batch_size=t.batch_size, grad_accum=t.grad_accum,
        lr_schedule=t.lr_schedule, warmup_steps=t.warmup_steps, seed=t.seed, precision=t.precision, dropout=t.dropout,
        targets=t.targets, prediction=model.backend.prediction, output_name=name, trigger_words=[d.trigger_word],
        captions=dataset.captions(), resolution=resolution, compute_dtype=result.compute_dtype,
        timestep_sampling=t.timestep_sampling, started_at=started, finished_at=_clock(),
        gradient_checkpointing=result.checkpointing,
        comment=f"lora-lab train on {folder.root.name} ({folder.cls})")
    meta.update(algorithm_metadata(t))
    written = []
    if result.state is not None:  # first: a LoRA form that cannot be written must not lose the run
        written.append(save_train_state(state_path(out_dir / f"{name}.safetensors"), result.state))
    return write_lora(out_dir, name, result.lora, folder, config.output.formats, meta) + written


def _clock() -> float:
    """Now, or $SOURCE_DATE_EPOCH where set (the reproducible-builds convention): the LoRA's ss_training_*_at
    timestamps are the only bytes that differ between two runs of the same config, seed and data."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return float(fixed) if fixed else time.time()


def _report(config: RunConfig, result: TrainResult, progress: _Progress | None, validate: Any, out_dir: Path,
            name: str, dist: Distributed | None) -> None:
    history = list(getattr(validate, "history", []))
    if config.output.loss_plot and result.losses:
        from .loss_plot import plot_losses

        buffer = io.BytesIO()
        plot_losses(result.losses, title=f"{name}: loss per step", validation=history).save(buffer, format="PNG")
        atomic_write_bytes(out_dir / f"{name}_loss.png", buffer.getvalue())
    report = {"steps": result.steps_done, "losses": result.losses, "validation": history,
              "world_size": dist.world_size if dist else 1, "global_batch": config.train.batch_size,
              "step_seconds": progress.times if progress else [], "warnings": result.warnings}
    for warning in result.warnings:
        print(f"lora-lab train: warning: {warning}", file=sys.stderr)
    atomic_write_bytes(out_dir / f"{name}_report.json", json.dumps(report, indent=1).encode())
