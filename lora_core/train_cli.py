"""`lora-lab train CONFIG.toml [flags]`: train a LoRA on a local diffusers model, in one process or many.

    lora-lab train run.toml --steps 2000 --set train.rank=32
    torchrun --nproc_per_node 4 -m lora_lab train run.toml          (or: accelerate launch -m lora_lab train run.toml)

A thin layer over lora_core: the schema is train_config.py, the model loading model_folders.py, the
multi-process parts distributed.py; the loop below only wires the dataset, the trainer and the outputs.
Every check that can fail on the configuration runs before any model loads.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes
from .buckets import BucketConfig
from .distributed import Distributed, init_from_env, launched_world_size, shutdown
from .encoding_cache import EncodingCache
from .errors import LoraLabError
from .lora_file import algorithm_metadata, training_metadata
from .model_folders import ModelFolder, check_family, check_parts, inspect_folder, load_model
from .train_config import ConfigError, RunConfig, check_world_size, load_config
from .train_outputs import write_lora
from .train_state import load_train_state, save_train_state, state_path
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
    parser.set_defaults(run=_run)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if flag not in ('steps', 'seed') else value}")
    return out


def preflight(config: RunConfig, world_size: int) -> ModelFolder:
    """Every configuration error, before any weights load."""
    check_world_size(config, world_size)
    folder = inspect_folder(config.model.path)
    check_family(folder, config.model.family)
    check_parts(folder, config.model.text_encoder)
    data = Path(config.data.path).expanduser()
    if not data.is_dir():
        raise ConfigError(f"{config.source}: data.path {data} is not a folder")
    if config.output.resume and not Path(config.output.resume).expanduser().is_file():
        raise ConfigError(f"{config.source}: output.resume {config.output.resume} does not exist")
    if config.output.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ConfigError(f"{config.source}: output.tensorboard needs the tensorboard package "
                              "(pip install tensorboard)") from None
    return folder


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, _overrides(args))
        folder = preflight(config, launched_world_size())
    except LoraLabError as error:
        print(f"lora-lab train: error: {error}", file=sys.stderr)
        return 2
    dist = init_from_env()
    try:
        run_training(config, folder, dist)
    except LoraLabError as error:
        print(f"lora-lab train: error: {error}", file=sys.stderr)
        return 1
    finally:
        shutdown(dist)
    return 0


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
    started = time.time()
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
            _save(config, folder, dataset, model, snapshot(), out_dir, f"{name}-step{report.step:06d}", started)

    try:
        result = train(model.backend, data.samples, config.train, order=data.order, resume=resume, on_step=on_step,
                       validate=validate, distributed=dist)
    finally:
        if progress is not None:
            progress.close()
    if main:
        _save(config, folder, dataset, model, result, out_dir, name, started)
        _report(config, result, progress, validate, out_dir, name, dist)
    if dist is not None:
        dist.barrier()  # the others wait until rank 0 has written
    return result


def _save(config: RunConfig, folder: ModelFolder, dataset, model, result: TrainResult, out_dir: Path, name: str,
          started: float) -> None:
    t, d = config.train, config.data
    resolution = (d.resolution, d.resolution) if isinstance(d.resolution, int) else tuple(d.resolution)
    meta = training_metadata(
        family=folder.family, rank=t.rank, alpha=t.alpha, learning_rate=t.learning_rate, max_steps=t.steps,
        steps_done=result.steps_done, num_images=len(dataset.images), batch_size=t.batch_size, grad_accum=t.grad_accum,
        lr_schedule=t.lr_schedule, warmup_steps=t.warmup_steps, seed=t.seed, precision=t.precision, dropout=t.dropout,
        targets=t.targets, prediction=model.backend.prediction, output_name=name, trigger_words=[d.trigger_word],
        captions=dataset.captions(), resolution=resolution, compute_dtype=result.compute_dtype,
        timestep_sampling=t.timestep_sampling, started_at=started, finished_at=time.time(),
        comment=f"lora-lab train on {folder.root.name} ({folder.cls})")
    meta.update(algorithm_metadata(t))
    if result.state is not None:  # first: a LoRA form that cannot be written must not lose the run
        save_train_state(state_path(out_dir / f"{name}.safetensors"), result.state)
    write_lora(out_dir, name, result.lora, folder, config.output.formats, meta)


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
              "step_seconds": progress.times if progress else []}
    atomic_write_bytes(out_dir / f"{name}_report.json", json.dumps(report, indent=1).encode())
