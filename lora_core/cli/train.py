"""`lora-lab train CONFIG.toml [flags]`: train a LoRA on a local diffusers model, in one process or many.

    lora-lab train run.toml --steps 2000 --set train.rank=32
    torchrun --nproc_per_node 4 -m lora_lab train run.toml          (or: accelerate launch -m lora_lab train run.toml)

A thin layer over lora_core: the schema is config.py, the model loading model_folders.py, what the run trains on
train_inputs.py, what it writes train_files.py (the LoRA's forms are handed in: converters/trained_lora.py),
its progress train_progress.py, early stops train_stops.py, several processes training/distributed.py; the
loop below only wires them. Every check that can fail on the configuration,
and the refusal to replace an earlier run's files, runs before any model loads. A run that stops early
(NaN, out of memory, a crash, Ctrl-C) saves its last completed step and says how to resume it.
Exit status: lora_core/exit_status.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shlex
import sys
from pathlib import Path

from ..errors import LoraLabError, NonFiniteLossError, TrainingCrashed, TrainingError, TrainingOutOfMemory
from ..exit_status import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED
from ..training.distributed import Distributed, init_from_env, launched_world_size, shutdown
from ..training.state import load_train_state, read_state_step
from ..training.trainer import StepReport, train
from ..training.run import TrainResult
from .config import ConfigError, RunConfig, check_world_size, load_config
from .edit_models import check_takes_references
from .model_folders import (ModelFolder, check_family, check_parts, image_to_video_kind,
                            inspect_folder, load_model)
from .train_files import Forms, RunFiles, clock, existing_outputs, periodic_stem
from .train_inputs import device, load_dataset, training_data
from .train_progress import Progress
from .train_stops import CtrlC, RunStopped
from .wan_experts import check_expert_range

# shortcut flag -> config key
SHORTCUTS = {"model": "model.path", "family": "model.family", "data": "data.path", "out": "output.dir",
             "name": "output.name", "steps": "train.steps", "seed": "train.seed", "resume": "output.resume"}


def add_arguments(parser: argparse.ArgumentParser, forms: Forms) -> None:
    """forms: how each output format is made (converters.trained_lora.FORMS, handed in by the command line)."""
    parser.add_argument("config", nargs="?", type=Path, help="TOML file ([model], [data], [train], [output])")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key (TOML value syntax), e.g. --set train.rank=32; repeatable")
    for flag, key in SHORTCUTS.items():
        parser.add_argument(f"--{flag}", default=None, help=f"same as --set {key}=...")
    parser.add_argument("--overwrite", action="store_true", help="replace the files an earlier run of this name "
                        "wrote in the output folder (same as --set output.overwrite=true); without it such a run "
                        "is refused before any model loads")
    parser.set_defaults(run=functools.partial(_run, forms=forms))


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
    formats = config.output.formats
    if config.train.algorithm == "oft" and (folder.family not in ("sd15", "sdxl") or formats != ["comfyui"]):
        # the UNets' ComfyUI form is kohya keys as trained; every other form goes through the converter, which
        # does not read OFT: refuse now rather than after training
        raise ConfigError(f"{config.source}: algorithm = \"oft\" is written by lora-lab train only for SD1.5/SDXL "
                          f"and only in ComfyUI form (this is a {folder.family} model, formats {formats}); set "
                          "output.formats = [\"comfyui\"], or train OFT for other models with the Train LoRA node")
    data = Path(config.data.path).expanduser()
    if not data.is_dir():
        raise ConfigError(f"{config.source}: data.path {data} is not a folder")
    if config.data.controls.enabled:
        _check_controls(config, folder)
    try:
        image_to_video_kind(folder, config.model.image_to_video)
        check_expert_range(folder.root, folder.denoiser, config.train.timestep_min, config.train.timestep_max)
    except LoraLabError as error:
        raise ConfigError(f"{config.source}: {error}") from None
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


def _check_controls(config: RunConfig, folder: ModelFolder) -> None:
    """An edit dataset needs a model that takes references, and its second folder must be there."""
    try:
        check_takes_references(folder.root, folder.family)
    except LoraLabError as error:
        raise ConfigError(f"{config.source}: {error}") from None
    second = config.data.controls.folder
    if second and not Path(second).expanduser().is_dir():
        raise ConfigError(f"{config.source}: data.controls.folder {second} is not a folder")


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


def _run(args: argparse.Namespace, forms: Forms) -> int:
    try:
        config = load_config(args.config, _overrides(args))
        folder = preflight(config, launched_world_size())
    except LoraLabError as error:
        print(f"lora-lab train: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    dist = init_from_env()
    try:
        run_training(config, folder, forms, dist)
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


def run_training(config: RunConfig, folder: ModelFolder, forms: Forms, dist: Distributed | None = None) -> TrainResult:
    """Load, encode, train and write. forms: how each output format is made (converters.trained_lora.FORMS)."""
    main = dist is None or dist.is_main
    started = clock()
    if main:
        Path(config.output.dir).expanduser().mkdir(parents=True, exist_ok=True)
    m = config.model
    model = load_model(folder, m.dtype, device(config, dist), m.text_encoder, m.prediction, m.shift,
                       m.image_to_video)
    dataset = load_dataset(config)
    data = training_data(config, dataset, model, dist)
    if not dataset.caption_transforms.active:
        model.release_text_encoders()
    first_frame = image_to_video_kind(folder, m.image_to_video)
    files = RunFiles(config, folder, forms, dataset, model.backend.prediction, started, first_frame)
    # a resumed run must condition on first frames as this one does (the node's identity says the same)
    settings = dataclasses.replace(config.train, identity={**config.train.identity, "first frame": first_frame}) \
        if first_frame else config.train
    resume = load_train_state(config.output.resume) if config.output.resume else None
    validate = None
    if data.validation and main:
        from ..training.validation import ValidationLoss

        every = config.data.validate_every or max(1, config.train.steps // 10)
        validate = ValidationLoss(model.backend, data.validation, every, last_step=config.train.steps,
                                  seed=config.train.seed, batch_size=config.train.batch_size,
                                  precision=config.train.precision)
    progress = Progress(config, files.out_dir, resume.step if resume else 0) if main else None

    def on_step(report: StepReport) -> None:
        if progress is not None:
            progress.step(report)
        snapshot = getattr(report, "snapshot", None)
        every = config.output.save_every
        if main and every and report.step % every == 0 and report.step < report.total and snapshot is not None:
            files.save(snapshot(), periodic_stem(config.output.name, report.step))

    ctrl_c = CtrlC()

    def should_stop() -> bool:  # every rank stops before the same step
        return ctrl_c.requested if dist is None else dist.mean(float(ctrl_c.requested)) > 0

    def stopped(error: TrainingError | None, kept: TrainResult | None) -> RunStopped:
        saved, why_nothing = files.keep(kept) if main else ([], "")
        if dist is not None and (error is None or isinstance(error, NonFiniteLossError)):
            dist.barrier()  # every rank stopped at the same step: the others wait until rank 0 has saved it
        reason, status = ("interrupted (Ctrl-C)", EXIT_INTERRUPTED) if error is None else (str(error), EXIT_FAILED)
        return RunStopped(reason, status, kept.steps_done if kept else 0, saved, why_nothing)

    try:
        with ctrl_c:
            result = train(model.backend, data.samples, settings, order=data.order, resume=resume,
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
        files.save(result, config.output.name)
        files.report(result, progress.times if progress else [], list(getattr(validate, "history", [])),
                     dist.world_size if dist else 1)
    if dist is not None:
        dist.barrier()  # the others wait until rank 0 has written
    return result
