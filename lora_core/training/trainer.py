"""The LoRA training loop, generic over any Backend (diffusers here, ComfyUI's ModelPatcher in nodes/).

One optimizer step = grad_accum micro-batches of batch_size samples. Every random draw (sample order,
noise, noise levels, adapter init, dropout) comes from generators seeded by config.seed, and the step's
draws are all made before its first forward, so the same seed and inputs give the same LoRA bit for bit on
the CPU, batch_size x grad_accum splits of one step see the same samples and noise, and a run stopped
between steps (cancel, NaN, out of memory) can continue exactly from its TrainState.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..adapters.injection import attached
from ..adapters.lora_weights import LoraWeights
from ..data.sample_order import BatchOrder
from ..data.samples import TrainSample, usable_in_autograd
from ..errors import LoraLabError, TrainingError
from .backend import Backend
from .checkpoint_modes import checkpointing_mode, outcome as checkpointing_outcome
from .checkpoint_plan import choose, kept_share, measure_units
from .checkpointing import checkpoint_units, gradient_checkpointing
from .compiled_units import compiled_units
from .checks import check_train_config
from .devices import fork_rng
from .failures import crashed, raise_clearly
from .frozen_layers import frozen_base, frozen_parameters, plain_fetch, plain_stored, torch_plain
from .loss_options import LossOptions
from .preservation import Preservation
from .run import Run, TrainResult
from .run_setup import roots
from .state import TrainState
from .timesteps import TimestepOptions


@dataclass
class TrainConfig:
    steps: int = 500
    learning_rate: float = 1e-4
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str | list[str] = "attention"
    batch_size: int = 1
    grad_accum: int = 1
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    precision: str = "fp32"  # autocast: fp32 (none), bf16 or fp16; the model's own dtype may still be lower
    gradient_checkpointing: str | bool = "off"  # off | partial | full (checkpoint_modes.py); true/false: full/off
    checkpoint_budget: float = 0.25  # partial: at most this share of off's activations stays kept
    compile: bool = False  # torch.compile the units (compiled_units.py)
    guard_inplace: bool = True  # copy block inputs saved for backward: original (ComfyUI) blocks do `x += ...`
    seed: int = 0
    max_grad_norm: float | None = 1.0  # None or 0 disables clipping
    weight_decay: float | None = None  # None: the optimizer's default (AdamW: 0.01)
    init_lora: LoraWeights | None = None  # start from these weights instead of a fresh init
    algorithm: str = "lora"  # lora | loha | lokr | dora | oft (adapters.ALGORITHMS)
    # lokr: factor, decompose_both; dora: axis; oft: block_size, constraint
    algorithm_options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adamw"  # optimizers.OPTIMIZERS
    optimizer_settings: dict[str, Any] = field(default_factory=dict)  # override the optimizer's defaults
    lr_cycles: int = 1  # cosine_with_restarts
    sigmoid_scale: float = 1.0  # timestep sampling "sigmoid" / "shift"
    sampling_shift: float = 3.0  # timestep sampling "shift"
    mode_scale: float = 1.29  # timestep sampling "mode"
    timestep_min: float = 0.0  # fraction of the model's timesteps trained on (Wan 2.2 experts)
    timestep_max: float = 1.0
    loss: LossOptions = field(default_factory=LossOptions)
    ema_decay: float = 0.0  # 0 = off; else the result is the EMA of the adapter weights
    train_text_encoder: bool = False  # adapters on backend.text_encoders too (conds must encode in draw())
    text_encoder_lr: float | None = None  # None: learning_rate
    text_encoder_targets: str | list[str] = "text_encoder"
    identity: dict[str, Any] = field(default_factory=dict)  # more of what a resumed run must share (e.g. model)

    def timestep_options(self) -> TimestepOptions:
        return TimestepOptions(self.timestep_sampling, self.logit_mean, self.logit_std, self.sigmoid_scale,
                               self.sampling_shift, self.mode_scale, self.timestep_min, self.timestep_max)


@dataclass
class StepReport:
    """What on_step receives after each optimizer step.

    snapshot() gives the result so far (LoRA and state to continue from): for periodic saves.
    evaluating() is a context in which the model carries the LoRA as it would be saved (EMA / schedule-free
    average, dropout off, no grad) and every RNG the run uses is restored on exit: for previews.
    """

    step: int
    total: int
    loss: float
    lr: float
    val_loss: float | None = None
    snapshot: Callable[[], "TrainResult"] | None = None
    evaluating: Callable[[], contextlib.AbstractContextManager] | None = None
    expert: str = ""  # two-expert runs (training/experts.py): the expert this step trained


def _validate(backend: Backend, samples: list[TrainSample], config: TrainConfig, order_given: bool) -> None:
    missing = [m for m in ("root", "prediction", "device", "sigma_from_u", "noisy", "denoise", "c_out") if not hasattr(backend, m)]
    if missing:
        raise TrainingError(f"{type(backend).__name__} is not a Backend: it lacks {', '.join(missing)}")
    if config.train_text_encoder and not getattr(backend, "text_encoders", None):
        raise TrainingError("train_text_encoder needs a text encoder: this backend has none (connect a CLIP)")
    check_train_config(config)
    if not samples:
        raise TrainingError("no training samples")
    misfit = [i for i, s in enumerate(samples) if s.mask is not None and s.mask.shape != s.latent.shape[-2:]]
    if misfit:
        s = samples[misfit[0]]
        raise TrainingError(f"{len(misfit)} sample masks do not match their latent grid (first: sample {misfit[0]}, "
                            f"mask {tuple(s.mask.shape)}, latent {tuple(s.latent.shape)})")
    shapes = {tuple(s.latent.shape) for s in samples}
    if len(shapes) > 1 and config.batch_size > 1 and not order_given:
        raise TrainingError(f"batch_size > 1 needs latents of one shape (or aspect buckets), got {sorted(shapes)}")


def train(
    backend: Backend,
    samples: list[TrainSample],
    config: TrainConfig,
    *,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    interrupt_on: tuple[type[BaseException], ...] = (),
    order: BatchOrder | None = None,
    resume: TrainState | None = None,
    validate: Callable[[int], float | None] | None = None,
    distributed: Any = None,
    preservation: Preservation | None = None,
) -> TrainResult:
    """Train a LoRA on `backend.root`. Adapters and layer wrappers are attached for the run and always removed.

    should_stop() is polled before each step; an exception of a type in interrupt_on raised during a step's
    forward/backward also ends the run. Either way the result holds the last completed step, interrupted=True,
    and its .state continues the run. A NaN loss raises NonFiniteLossError, running out of memory
    TrainingOutOfMemory and any other exception TrainingCrashed, all carrying that result. validate(step) may return a validation loss for the report.
    distributed (lora_core.distributed.Distributed): data-parallel, this process computes its rank's slice.
    preservation (training/preservation.py): preservation terms and regularisation datasets, indexed like samples.
    """
    # ComfyUI runs nodes under inference_mode: adapters, optimizer state and activations must be made outside it
    with torch.inference_mode(False), torch.enable_grad():
        _validate(backend, samples, config, order is not None)
        samples = [TrainSample(usable_in_autograd(s.latent), usable_in_autograd(s.cond), s.caption,
                               usable_in_autograd(s.mask)) for s in samples]
        device = torch.device(backend.device)
        with fork_rng(device):
            kept = preservation.usable_in_autograd() if preservation is not None else None
            run = Run(backend, samples, config, order, resume, distributed, kept)
            return _loop(run, on_step, should_stop, interrupt_on, validate)


def prepare_model(stack: contextlib.ExitStack, run: Run) -> None:
    """For the run's life (the stack's): frozen base layers, the adapters attached, compiled units, checkpointing."""
    backend, config = run.backend, run.config
    trees = roots(backend, config)
    for tree in trees.values():
        stack.enter_context(frozen_parameters(tree))
        stack.enter_context(frozen_base(tree, getattr(backend, "fetch_weight", plain_fetch),
                                        getattr(backend, "is_plain", torch_plain),
                                        getattr(backend, "stored_weights", plain_stored)))
    run.attachment = stack.enter_context(attached(trees, run.adapters))
    modules = dict(backend.root.named_modules())
    adapted = [modules[n] for n in run.adapters if ":" not in n]
    mode = checkpointing_mode(config.gradient_checkpointing)
    recompute, share = _plan(run, mode)  # measured eagerly, before anything is compiled
    run.compile_stats = stack.enter_context(compiled_units(checkpoint_units(backend.root), config.compile,
                                                           warn=lambda message: _warn(run, message)))
    units = stack.enter_context(gradient_checkpointing(backend.root, mode != "off", config.guard_inplace,
                                                       adapted=adapted, recompute=recompute))
    run.checkpointing, warning = checkpointing_outcome(mode, units, sum(recompute) if recompute else units, share,
                                                       type(backend.root).__name__)
    if warning:
        _warn(run, warning)
    for component, tree in trees.items():  # text encoders: no checkpointing, but ComfyUI's CLIP adds in place
        if component:
            stack.enter_context(gradient_checkpointing(tree, False, config.guard_inplace))


def guarded_step(run: Run, interrupt_on, owner: Any = None, before: Callable[[], None] | None = None) -> float | None:
    """One optimizer step of `run` (after `before`), its compiled units on for the step only (not for previews
    between steps). None when the host cancelled inside it (ComfyUI's ops may, from the model's forward): no
    optimizer step was taken, the adapters hold the last completed one. Any other failure raises, named clearly
    and carrying `owner`'s result (the run's own by default)."""
    owner = run if owner is None else owner
    try:
        run.compile_stats.training = True
        if before is not None:
            before()
        return run.step()
    except interrupt_on:
        return None
    except LoraLabError:
        raise  # NaN (carries its result) or a named bad input
    except Exception as error:
        if isinstance(error, RuntimeError):
            raise_clearly(error, owner, "during")
        raise crashed(error, owner, "during") from error
    finally:
        run.compile_stats.training = False


def _loop(run: Run, on_step, should_stop, interrupt_on, validate) -> TrainResult:
    config = run.config
    with contextlib.ExitStack() as stack:
        prepare_model(stack, run)
        while len(run.losses) < config.steps:
            if should_stop is not None and should_stop():
                return run.result(interrupted=True)
            loss = guarded_step(run, interrupt_on)
            if loss is None:
                return run.result(interrupted=True)
            step = len(run.losses)
            if on_step is not None or validate is not None:  # validation also without a progress listener
                try:
                    val_loss = None
                    if validate is not None:
                        with run.evaluating():
                            val_loss = validate(step)
                    if on_step is not None:
                        on_step(StepReport(step, config.steps, loss, run.lr(), val_loss, snapshot=run.result,
                                           evaluating=run.evaluating))
                except interrupt_on:
                    return run.result(interrupted=True)
                except LoraLabError:
                    raise
                except Exception as error:  # a failed save or preview: the step itself is complete
                    if isinstance(error, RuntimeError):
                        raise_clearly(error, run, "after")
                    raise crashed(error, run, "after") from error
    result = run.result()
    if result.compile_report:
        logging.getLogger("lora_lab").info("LoRA Lab: compile %s: %s", result.compiled, result.compile_report)
    return result


def _warn(run: Run, message: str) -> None:
    run.warnings.append(message)
    logging.getLogger("lora_lab").warning("LoRA Lab: %s", message)


def _plan(run: Run, mode: str) -> tuple[list[bool] | None, float | None]:
    """partial: which units to recompute (checkpoint_plan.py, measured on the run's calibration batch) and the
    share of activations the others keep; other modes: (None, None)."""
    units = checkpoint_units(run.backend.root)
    if mode != "partial" or not units:
        return None, None
    records = measure_units(units, run.calibration_pass, run.config.guard_inplace)
    recompute = choose(records, run.config.checkpoint_budget, run.device.type)
    return recompute, kept_share(records, recompute)


