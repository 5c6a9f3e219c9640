"""Every check of a TrainConfig that needs no model or data: the trainer runs it first, and `lora-lab train`
runs it before any model loads. Each value is checked by the module that owns it (optimizers, schedules,
algorithms, targets, timesteps, loss options, precision); the rules that join two settings live here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..adapters.algorithms import check_algorithm
from ..errors import TrainingError
from .lr_schedule import check_schedule
from ..optimizers import OptimizerSpec, check_learning_rate, optimizer_spec, settings_for
from .precision import check_precision
from ..adapters.targets import target_items
from .checkpoint_modes import check_budget, checkpointing_mode

if TYPE_CHECKING:
    from .trainer import TrainConfig

SCHEDULE_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def optimizer_settings(config: TrainConfig) -> tuple[OptimizerSpec, dict[str, Any]]:
    """The optimizer's spec and the settings the run overrides (optimizer_settings, weight_decay, and a
    schedule-free optimizer's own warm-up)."""
    spec = optimizer_spec(config.optimizer)
    settings = dict(config.optimizer_settings)
    if config.weight_decay is not None:
        settings["weight_decay"] = config.weight_decay
    if spec.schedule_free:
        settings.setdefault("warmup_steps", config.warmup_steps)  # its own warm-up, which keeps its averaging right
    return spec, settings


def check_train_config(config: TrainConfig) -> None:
    for name in ("steps", "batch_size", "grad_accum", "rank"):
        if int(getattr(config, name)) < 1:
            raise TrainingError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not 0 <= config.dropout < 1:
        raise TrainingError(f"dropout must be in [0, 1), got {config.dropout}")
    config.loss.check()
    config.timestep_options().check()
    check_precision(config.precision)
    checkpointing_mode(config.gradient_checkpointing)
    check_budget(config.checkpoint_budget)
    if config.init_lora is None:  # continuing a LoRA keeps its own layers and algorithm
        check_algorithm(config.algorithm, config.algorithm_options)
        target_items(config.targets)
        if config.train_text_encoder:
            target_items(config.text_encoder_targets)
    spec, settings = optimizer_settings(config)
    settings_for(spec, settings)
    check_learning_rate(spec, config.learning_rate, "model")
    if config.train_text_encoder and config.text_encoder_lr is not None:
        check_learning_rate(spec, config.text_encoder_lr, "text encoder")
    check_schedule(config.lr_schedule, config.warmup_steps)
    if spec.schedule_free and config.lr_schedule not in SCHEDULE_FREE_SCHEDULES:
        raise TrainingError(f"{config.optimizer} needs no LR schedule (it is schedule-free); "
                            f"set lr_schedule to constant, not {config.lr_schedule!r}")
    if config.ema_decay and not 0 < config.ema_decay < 1:
        raise TrainingError(f"ema_decay must be in (0, 1) (or 0 = off), got {config.ema_decay}")
    if config.ema_decay and spec.schedule_free:
        raise TrainingError("schedule-free AdamW already averages its weights; turn EMA off with it")
