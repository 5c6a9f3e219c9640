"""The LoRA training loop, generic over any Backend (diffusers here, ComfyUI's ModelPatcher in nodes/).

One optimizer step = grad_accum micro-batches of batch_size samples. Every random draw (sample order,
noise, noise levels, adapter init, dropout) comes from generators seeded by config.seed, and the step's
draws are all made before its first forward, so the same seed and inputs give the same LoRA bit for bit on
the CPU, batch_size x grad_accum splits of one step see the same samples and noise, and a run stopped
between steps (cancel, NaN, out of memory) can continue exactly from its TrainState.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .adapters import LoraAdapter, adapter_from_weights, new_adapter
from .backend import Backend
from .checkpointing import gradient_checkpointing
from .errors import NonFiniteLossError, TrainingError, TrainingOutOfMemory
from .frozen_layers import explain_inference_error, frozen_base, plain_fetch, torch_plain
from .injection import attached
from .lora_weights import LoraWeights
from .objective import diffusion_loss
from .optim import make_optimizer, make_scheduler
from .precision import autocast, compute_dtype, dtype_name
from .sample_order import BatchOrder, EpochShuffle
from .targets import select_targets
from .timesteps import sample_u
from .train_state import TrainState, restore_rng, rng_state


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
    gradient_checkpointing: bool = False
    guard_inplace: bool = True  # copy block inputs saved for backward: original (ComfyUI) blocks do `x += ...`
    seed: int = 0
    max_grad_norm: float | None = 1.0  # None or 0 disables clipping
    weight_decay: float = 0.01
    init_lora: LoraWeights | None = None  # start from these weights instead of a fresh init


@dataclass
class TrainSample:
    latent: torch.Tensor  # (C, H, W) or (C, T, H, W), already in the model's latent space (process_latent_in-ed)
    cond: Any  # opaque, handed to backend.denoise paired with this latent; see draw_cond
    caption: str = ""


def draw_cond(cond: Any, generator: torch.Generator) -> Any:
    """A cond that varies per step (caption dropout, tag shuffling) has draw(generator) -> the cond to use;
    it is called with the run's generator when the step's randomness is drawn, so runs stay reproducible."""
    draw = getattr(cond, "draw", None)
    return draw(generator) if callable(draw) else cond


@dataclass
class StepReport:
    """What on_step receives after each optimizer step."""

    step: int
    total: int
    loss: float
    lr: float
    val_loss: float | None = None


@dataclass
class TrainResult:
    lora: LoraWeights
    losses: list[float] = field(default_factory=list)  # one per optimizer step: mean of its micro-steps
    steps_done: int = 0
    interrupted: bool = False
    state: TrainState | None = None  # to continue the run exactly (taken after the last completed step)
    compute_dtype: str = "fp32"  # the dtype the model's layers actually computed in


def _validate(backend: Backend, samples: list[TrainSample], config: TrainConfig, order_given: bool) -> None:
    missing = [m for m in ("root", "prediction", "device", "sigma_from_u", "noisy", "denoise", "c_out") if not hasattr(backend, m)]
    if missing:
        raise TrainingError(f"{type(backend).__name__} is not a Backend: it lacks {', '.join(missing)}")
    if not samples:
        raise TrainingError("no training samples")
    for name in ("steps", "batch_size", "grad_accum", "rank"):
        if int(getattr(config, name)) < 1:
            raise TrainingError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not 0 <= config.dropout < 1:
        raise TrainingError(f"dropout must be in [0, 1), got {config.dropout}")
    shapes = {tuple(s.latent.shape) for s in samples}
    if len(shapes) > 1 and config.batch_size > 1 and not order_given:
        raise TrainingError(f"batch_size > 1 needs latents of one shape (or aspect buckets), got {sorted(shapes)}")


def make_adapters(backend: Backend, config: TrainConfig, generator: torch.Generator) -> dict[str, LoraAdapter]:
    modules = dict(backend.root.named_modules())
    if config.init_lora is not None:
        adapters = {n: adapter_from_weights(modules[n], w) for n, w in config.init_lora.modules.items()}
        for a in adapters.values():
            a.dropout = torch.nn.Dropout(config.dropout) if config.dropout > 0 else torch.nn.Identity()
    else:
        names = select_targets(backend.root, config.targets)
        adapters = {n: new_adapter(modules[n], config.rank, config.alpha, config.dropout, generator) for n in names}
    return {n: a.to(backend.device).train() for n, a in adapters.items()}


@contextlib.contextmanager
def _frozen(root: torch.nn.Module):
    """Base weights get no grads (they are shared with the rest of the graph); restored after."""
    was = [p for p in root.parameters() if p.requires_grad]
    try:
        for p in was:
            p.requires_grad_(False)
        yield
    finally:
        for p in was:
            # a weight made under inference_mode (ComfyUI loaders) may only be flagged inside it again
            with torch.inference_mode(p.is_inference()):
                p.requires_grad_(True)


def usable_in_autograd(obj: Any) -> Any:
    """Copy inference-mode tensors (anywhere in dicts/lists/tuples) so autograd may save them."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.is_inference() else obj
    if isinstance(obj, dict):
        return {k: usable_in_autograd(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(usable_in_autograd(v) for v in obj)
    return obj


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    if isinstance(error, getattr(torch, "OutOfMemoryError", ())) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


OOM_ADVICE = ("lower batch_size (use grad_accumulation instead), the image resolution, or rank; turn "
              "gradient_checkpointing on; or train fewer layers (target_preset 'attention')")


class _Run:
    """One training run's objects; step() does one optimizer step, state() captures it between steps."""

    def __init__(self, backend: Backend, samples: list[TrainSample], config: TrainConfig, order: BatchOrder | None,
                 resume: TrainState | None):
        self.backend, self.samples, self.config = backend, samples, config
        self.device = torch.device(backend.device)
        self.gen = torch.Generator().manual_seed(config.seed)  # CPU generator: same draws on every device
        self.adapters = make_adapters(backend, config, self.gen)
        self.params = [p for a in self.adapters.values() for p in a.parameters()]
        self.optimizer = make_optimizer(self.params, config.learning_rate, config.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, config.lr_schedule, config.warmup_steps, config.steps)
        self.compute_dtype = compute_dtype(config.precision, getattr(backend, "compute_dtype", torch.float32))
        # fp16 gradients underflow without loss scaling, whether autocast or the model's own dtype made them fp16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.compute_dtype == torch.float16)
        self.order = order or EpochShuffle(len(samples), int(self.gen.initial_seed()) + 1)
        self.losses: list[float] = []
        torch.manual_seed(config.seed)  # adapter dropout uses the global RNG (forked by the caller)
        if resume is not None:
            self._restore(resume)
        self.boundary = self._boundary()

    # --- state ------------------------------------------------------------------------------------
    def _boundary(self) -> tuple[dict, dict]:
        return rng_state(self.gen, self.device), self.order.state_dict()

    def state(self) -> TrainState:
        rng, order = self.boundary
        return TrainState(
            step=len(self.losses), losses=list(self.losses), rng=rng, order=order,
            adapters={f"{n}::{k}": v.detach().cpu().clone() for n, a in self.adapters.items() for k, v in a.state_dict().items()},
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
        )

    def _restore(self, state: TrainState) -> None:
        for name, adapter in self.adapters.items():
            own = {k.split("::", 1)[1]: v for k, v in state.adapters.items() if k.split("::", 1)[0] == name}
            if set(own) != set(adapter.state_dict()):
                raise TrainingError(f"the training state has no adapter for {name!r}: it belongs to another run")
            adapter.load_state_dict(own)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        self.order.load_state_dict(state.order)
        restore_rng(state.rng, self.gen, self.device)
        self.losses = list(state.losses)

    def result(self, interrupted: bool = False) -> TrainResult:
        lora = LoraWeights({n: a.weights() for n, a in self.adapters.items()})
        return TrainResult(lora=lora, losses=list(self.losses), steps_done=len(self.losses), interrupted=interrupted,
                           state=self.state(), compute_dtype=dtype_name(self.compute_dtype))

    # --- one optimizer step ---------------------------------------------------------------------------
    def _draw(self) -> list[tuple[list[int], list[torch.Tensor], torch.Tensor, list[Any]]]:
        """The whole step's randomness, up front: per micro-batch its samples, noise, noise levels and conds."""
        c = self.config
        batches = [self.order.next_batch(c.batch_size) for _ in range(c.grad_accum)]
        noise = [[torch.randn(self.samples[i].latent.shape, generator=self.gen) for i in batch] for batch in batches]
        u = sample_u(c.batch_size * c.grad_accum, c.timestep_sampling, self.gen, c.logit_mean, c.logit_std)
        conds = [[draw_cond(self.samples[i].cond, self.gen) for i in batch] for batch in batches]
        return [(batch, noise[m], u[m * c.batch_size:(m + 1) * c.batch_size], conds[m]) for m, batch in enumerate(batches)]

    def step(self) -> float:
        step = len(self.losses)
        micro_losses = []
        self.optimizer.zero_grad(set_to_none=True)
        for m, (batch, noise, u, conds) in enumerate(self._draw()):
            x0 = torch.stack([self.samples[i].latent for i in batch]).float().to(self.device)
            with autocast(self.config.precision, self.device):
                loss = diffusion_loss(self.backend, x0, torch.stack(noise).to(self.device), u, conds).mean()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss became {value} at step {step + 1} (micro-step {m + 1})",
                                         self.result(interrupted=True))
            self.scaler.scale(loss / self.config.grad_accum).backward()
            micro_losses.append(value)
        self._clip_and_step(step)
        self.scheduler.step()
        self.losses.append(sum(micro_losses) / len(micro_losses))
        self.boundary = self._boundary()
        return self.losses[-1]

    def _clip_and_step(self, step: int) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
        if not torch.isfinite(norm) and not self.scaler.is_enabled():  # fp16: the scaler skips the step itself
            raise NonFiniteLossError(f"gradient became {float(norm)} at step {step + 1}", self.result(interrupted=True))
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


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
) -> TrainResult:
    """Train a LoRA on `backend.root`. Adapters and layer wrappers are attached for the run and always removed.

    should_stop() is polled before each step; an exception of a type in interrupt_on raised during a step's
    forward/backward also ends the run. Either way the result holds the last completed step, interrupted=True,
    and its .state continues the run. A NaN loss raises NonFiniteLossError and running out of memory
    TrainingOutOfMemory, both carrying that result. validate(step) may return a validation loss for the report.
    """
    # ComfyUI runs nodes under inference_mode: adapters, optimizer state and activations must be made outside it
    with torch.inference_mode(False), torch.enable_grad():
        _validate(backend, samples, config, order is not None)
        samples = [TrainSample(usable_in_autograd(s.latent), usable_in_autograd(s.cond), s.caption) for s in samples]
        device = torch.device(backend.device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            run = _Run(backend, samples, config, order, resume)
            return _loop(run, on_step, should_stop, interrupt_on, validate)


def _loop(run: _Run, on_step, should_stop, interrupt_on, validate) -> TrainResult:
    backend, config = run.backend, run.config
    with contextlib.ExitStack() as stack:
        stack.enter_context(_frozen(backend.root))
        stack.enter_context(frozen_base(backend.root, getattr(backend, "fetch_weight", plain_fetch),
                                        getattr(backend, "is_plain", torch_plain)))
        stack.enter_context(attached(backend.root, run.adapters))
        modules = dict(backend.root.named_modules())
        stack.enter_context(gradient_checkpointing(backend.root, config.gradient_checkpointing, config.guard_inplace,
                                                   adapted=[modules[name] for name in run.adapters]))
        while len(run.losses) < config.steps:
            if should_stop is not None and should_stop():
                return run.result(interrupted=True)
            try:  # a host may cancel from inside the model's forward (ComfyUI's ops do)
                loss = run.step()
            except interrupt_on:
                # no optimizer step was taken for this step: the adapters hold the last completed one
                return run.result(interrupted=True)
            except RuntimeError as error:
                _raise_clearly(error, run)
                raise
            step = len(run.losses)
            validation = validate(step) if validate is not None else None  # also without a progress listener
            if on_step is not None:
                on_step(StepReport(step, config.steps, loss, run.lr(), validation))
    return run.result()


def _raise_clearly(error: BaseException, run: _Run) -> None:
    if is_out_of_memory(error):
        run.optimizer.zero_grad(set_to_none=True)
        raise TrainingOutOfMemory(f"out of memory at step {len(run.losses) + 1}; {OOM_ADVICE}",
                                  run.result(interrupted=True)) from error
    clear = explain_inference_error(error)
    if clear is not None:
        raise clear from error
