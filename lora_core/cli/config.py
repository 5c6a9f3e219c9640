"""`lora-lab train` configuration: a TOML file, flags on top, checked before any model loads.

    [model]   path, family, dtype, text_encoder, prediction, shift, device, image_to_video
    [data]    path, resolution, trigger_word, captions, buckets, augment, mask, controls, cache_folder, video clips,
              validation
    [train]   any field of lora_core.trainer.TrainConfig (steps, learning_rate, rank, alpha, targets, ...)
    [output]  dir, name, formats, save_every, tensorboard, loss_plot, resume, overwrite

Every key is checked against this schema: a misspelt one is an error naming it and the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.augment import AugmentConfig
from ..data.caption_transforms import CaptionTransforms
from ..families import cli_families
from ..errors import LoraLabError
from ..training.trainer import TrainConfig
from ..training.checks import check_train_config


class ConfigError(LoraLabError):
    """A bad `lora-lab train` configuration (file, key or value); raised before any model loads."""


FAMILIES = cli_families()
DTYPES = ("fp32", "bf16", "fp16")
FORMATS = ("comfyui", "diffusers")


@dataclass
class ModelSection:
    path: str = ""  # a local diffusers pipeline folder, or a transformer/UNet folder
    family: str = "auto"  # auto (from the folder's config.json) or one of FAMILIES
    dtype: str = "fp32"  # the frozen base weights' dtype (the LoRA itself trains in fp32)
    text_encoder: str = "pipeline"  # pipeline: the folder's encoders; hashed: a tokenizer-free stand-in (tests)
    prediction: str = "auto"  # UNets: eps | v | auto (the scheduler's prediction_type)
    shift: float = 0.0  # flow models' timestep shift; 0 = the scheduler's (or the family's) default
    device: str = "auto"  # auto: this rank's GPU, else CPU
    image_to_video: str = "auto"  # auto | first frame | off: each clip's first frame conditions a Wan I2V/TI2V model


@dataclass
class BucketSection:
    enabled: bool = False
    min_side: int = 256
    max_side: int = 2048
    step: int = 64


@dataclass
class VideoSection:
    enabled: bool = False  # read videos / frame folders as clips (Wan)
    frames: int = 33
    frame_sampling: str = "head"
    target_fps: float = 0.0
    clips_per_video: int = 1
    include_images: bool = True


@dataclass
class ControlSection:
    enabled: bool = False  # edit pairs: each image's control images (data/pairs.py), for edit models
    folder: str = ""  # a second folder laid out like data.path ("": control/, control_2/, ... beside the images)
    resolution: int = 0  # 0: each control fitted to its image's bucket; N: a bucket of its own of about N² pixels


@dataclass
class DataSection:
    path: str = ""
    resolution: int | list[int] = 512
    trigger_word: str = ""
    default_caption: str = ""
    caption_extension: str = ".txt"
    caption_template: str = ""
    small_images: str = "upscale"
    validation: float = 0.0  # fraction (< 1) or count (>= 1) of images held out for a validation loss
    validate_every: int = 0  # steps between validation losses (0: only with validation images, every 10%)
    cache_folder: str = ""  # cached latents / text encodings on disk ("" = in memory only)
    mask: str = "off"  # loss masks: off | alpha | mask_folder | both (data/masks.py; images only)
    mask_floor: float = 0.0  # weight of the masked-out area
    buckets: BucketSection = field(default_factory=BucketSection)
    video: VideoSection = field(default_factory=VideoSection)
    captions: CaptionTransforms = field(default_factory=CaptionTransforms)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    controls: ControlSection = field(default_factory=ControlSection)


@dataclass
class OutputSection:
    dir: str = "lora_lab_output"
    name: str = "lora"
    formats: list[str] = field(default_factory=lambda: ["comfyui"])  # comfyui (kohya keys) and/or diffusers (PEFT)
    save_every: int = 0  # steps between saves with a state to resume from (0: only at the end)
    tensorboard: bool = False  # log to <dir>/tensorboard (needs the tensorboard package)
    loss_plot: bool = True
    resume: str = ""  # a <name>.state to continue from (any world size, same global batch)
    overwrite: bool = False  # replace the files a run of this name wrote before (else: refused before loading)


# TrainConfig fields the file may not set: objects, not values
_NOT_IN_FILE = {"init_lora", "identity"}


@dataclass
class RunConfig:
    model: ModelSection
    data: DataSection
    train: TrainConfig
    output: OutputSection
    source: str = "<flags>"  # the file it came from, for messages


_SECTIONS = {"model": ModelSection, "data": DataSection, "train": TrainConfig, "output": OutputSection}


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name not in _NOT_IN_FILE}


def _unknown(key: str, valid: list[str], where: str, source: str) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"{source}: unknown key {where}{key!r}{hint}")


def _build(cls: type, table: dict[str, Any], where: str, source: str) -> Any:
    """The dataclass from a TOML table, every key checked; nested dataclass fields from sub-tables."""
    fields = _fields(cls)
    defaults = cls()
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise _unknown(key, list(fields), where, source)
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {where}{key} must be a table ([{where}{key}]), got {value!r}")
            value = _build(type(default), value, f"{where}{key}.", source)
        else:
            value = _checked(value, default, f"{where}{key}", source)
        values[key] = value
    try:
        return cls(**values)
    except LoraLabError as error:  # the dataclass's own range checks (augment, captions)
        raise ConfigError(f"{source}: [{where.rstrip('.')}] {error}") from None


def _checked(value: Any, default: Any, name: str, source: str) -> Any:
    """Same kind as the default (ints pass for floats); None defaults take anything."""
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (name == "data.resolution" and isinstance(value, list))
    elif isinstance(default, str):
        ok = isinstance(value, str) or (name == "train.targets" and isinstance(value, list)) or \
            (name == "train.gradient_checkpointing" and isinstance(value, bool))  # true/false from older configs
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{source}: {name} must be {type(default).__name__}, got {value!r}")
    return value


def parse_config(table: dict[str, Any], source: str = "<flags>") -> RunConfig:
    for key in table:
        if key not in _SECTIONS:
            raise _unknown(key, list(_SECTIONS), "", source)
    sections = {}
    for name, cls in _SECTIONS.items():
        raw = table.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: {name} must be a table ([{name}]), got {raw!r}")
        sections[name] = _build(cls, raw, f"{name}.", source)
    config = RunConfig(**sections, source=source)
    check_values(config)
    return config


def _toml():
    """tomllib (Python 3.11+) or its backport tomli (3.10), imported when a config is read: no other command
    needs either."""
    try:
        if sys.version_info >= (3, 11):  # this form, not try/except ImportError, is what mypy checks per version
            import tomllib
        else:
            import tomli as tomllib
    except ModuleNotFoundError:
        raise ConfigError("reading a TOML config on Python 3.10 needs the tomli package: pip install tomli") from None
    return tomllib


def apply_overrides(table: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` flags (value in TOML syntax; a bare word is a string) set or replace file keys."""
    tomllib = _toml()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        path, raw = item.split("=", 1)
        parts = path.strip().split(".")
        if len(parts) < 2:
            raise ConfigError(f"--set {item!r}: name the section too, e.g. train.{parts[0]}={raw}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = table
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a table")
        node[parts[-1]] = value
    return table


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """The file (if any) with the overrides on top, parsed and value-checked."""
    table: dict[str, Any] = {}
    source = "<flags>"
    if path is not None:
        path = Path(path).expanduser()
        source = str(path)
        tomllib = _toml()
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(apply_overrides(table, list(overrides)), source)


def check_values(config: RunConfig) -> None:
    """Every value, before any model loads: the config's own choices here, the rest by the modules that own them
    (training/checks.py for [train], the dataset, bucket and frame-sampling checks for [data])."""
    src, m, d, t, o = config.source, config.model, config.data, config.train, config.output
    if not m.path:
        raise ConfigError(f"{src}: model.path is required (a local diffusers model folder)")
    if not d.path:
        raise ConfigError(f"{src}: data.path is required (a folder of images with .txt captions)")
    choices = {"model.family": (m.family, ("auto",) + FAMILIES), "model.dtype": (m.dtype, DTYPES),
               "model.text_encoder": (m.text_encoder, ("pipeline", "hashed")),
               "model.prediction": (m.prediction, ("auto", "eps", "v")),
               "model.image_to_video": (m.image_to_video, ("auto", "first frame", "off"))}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{src}: {name} = {value!r}; choose one of {', '.join(allowed)}")
    _check_device(src, m.device)
    if m.shift < 0:
        raise ConfigError(f"{src}: model.shift must be >= 0 (0: the scheduler's), got {m.shift}")
    _check_data(src, d)
    if t.train_text_encoder:
        raise ConfigError(f"{src}: train.train_text_encoder is not supported by lora-lab train yet (captions are "
                          "encoded once, before training); use the Train LoRA node for a text-encoder LoRA")
    _owned(src, "train", check_train_config, t)
    _check_output(src, o)


def _owned(src: str, where: str, check: Callable[..., Any], *args: Any) -> None:
    """Run a check its owning module defines; its error, prefixed with the config section, is a ConfigError."""
    try:
        check(*args)
    except LoraLabError as error:
        raise ConfigError(f"{src}: [{where}] {error}") from None


def _check_device(src: str, device: str) -> None:
    if device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{src}: model.device = {device!r}; give auto or a torch device (cpu, cuda, cuda:1, "
                          "mps, ...)") from None


def _check_data(src: str, d: DataSection) -> None:
    from ..data.buckets import BucketConfig, bucket_sizes
    from ..data.dataset import check_options, parse_resolution
    from ..data.frame_sampling import check_sampling, snap_frames
    from ..data.masks import MaskConfig
    from ..data.pairs import PairConfig

    _owned(src, "data", check_options, d.resolution, d.caption_template, d.small_images)
    _owned(src, "data", MaskConfig, d.mask, d.mask_floor)
    if d.mask != "off" and d.video.enabled:
        raise ConfigError(f"{src}: data.mask = {d.mask!r} works on image datasets only; set it to \"off\" with "
                          "data.video")
    if d.buckets.enabled:
        b = d.buckets
        _owned(src, "data.buckets", bucket_sizes, BucketConfig(parse_resolution(d.resolution), b.min_side,
                                                              b.max_side, b.step))
    if d.controls.enabled:
        _owned(src, "data.controls", PairConfig, None, d.controls.resolution)
        if d.video.enabled:
            raise ConfigError(f"{src}: data.controls pairs images; turn data.video off")
    _owned(src, "data.video", check_sampling, d.video.frame_sampling, d.video.clips_per_video)
    _owned(src, "data.video", snap_frames, d.video.frames)
    if d.validate_every < 0:
        raise ConfigError(f"{src}: data.validate_every must be >= 0, got {d.validate_every}")


def _check_output(src: str, o: OutputSection) -> None:
    for fmt in o.formats:
        if fmt not in FORMATS:
            raise ConfigError(f"{src}: output.formats has {fmt!r}; choose from {', '.join(FORMATS)}")
    if not o.formats:
        raise ConfigError(f"{src}: output.formats is empty; give comfyui and/or diffusers")
    if not o.name or Path(o.name).name != o.name or "\\" in o.name:
        raise ConfigError(f"{src}: output.name = {o.name!r}; give a file name without a folder (the folder is output.dir)")
    if o.save_every < 0:
        raise ConfigError(f"{src}: output.save_every must be >= 0, got {o.save_every}")


def check_world_size(config: RunConfig, world_size: int) -> None:
    """train.batch_size is the global batch: it must split evenly over the processes."""
    if world_size > 1 and config.train.batch_size % world_size:
        raise ConfigError(
            f"{config.source}: train.batch_size = {config.train.batch_size} (the global batch) does not divide by the "
            f"{world_size} processes launched; use a multiple of {world_size}, or raise train.grad_accum instead")
