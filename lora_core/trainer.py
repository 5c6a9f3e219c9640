"""The LoRA training loop, generic over any Backend (diffusers here, ComfyUI's ModelPatcher in nodes/).

One optimizer step = grad_accum micro-steps of batch_size samples. Every random draw (sample order,
noise, noise levels, adapter init, dropout) comes from generators seeded by config.seed, so the same
seed and inputs give the same LoRA bit for bit on CPU.
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
from .errors import NonFiniteLossError, TrainingError
from .injection import attached
from .lora_weights import LoraWeights
from .objective import diffusion_loss
from .optim import make_optimizer, make_scheduler
from .precision import autocast, grad_scaler
from .targets import select_targets
from .timesteps import sample_u


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
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    guard_inplace: bool = True  # copy block inputs saved for backward: original (ComfyUI) blocks do `x += ...`
    seed: int = 0
    max_grad_norm: float | None = 1.0  # None or 0 disables clipping
    weight_decay: float = 0.01
    init_lora: LoraWeights | None = None  # start from these weights (resume) instead of a fresh init


@dataclass
class TrainSample:
    latent: torch.Tensor  # (C, H, W), already in the model's latent space (process_latent_in-ed)
    cond: Any  # opaque, handed to backend.denoise paired with this latent
    caption: str = ""


@dataclass
class TrainResult:
    lora: LoraWeights
    losses: list[float] = field(default_factory=list)  # one per optimizer step: mean of its micro-steps
    steps_done: int = 0
    interrupted: bool = False


def _validate(backend: Backend, samples: list[TrainSample], config: TrainConfig) -> None:
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
    if len(shapes) > 1 and config.batch_size > 1:
        raise TrainingError(f"batch_size > 1 needs latents of one shape, got {sorted(shapes)}")


class SampleOrder:
    """Epoch shuffling: indices from a fresh seeded permutation each time the previous one runs out."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator, self.queue = n, generator, []

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self.queue:
                self.queue = torch.randperm(self.n, generator=self.generator).tolist()
            out.append(self.queue.pop(0))
        return out


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


def _result(adapters: dict[str, LoraAdapter], losses: list[float], interrupted: bool = False) -> TrainResult:
    lora = LoraWeights({n: a.weights() for n, a in adapters.items()})
    return TrainResult(lora=lora, losses=list(losses), steps_done=len(losses), interrupted=interrupted)


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


def train(
    backend: Backend,
    samples: list[TrainSample],
    config: TrainConfig,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    interrupt_on: tuple[type[BaseException], ...] = (),
) -> TrainResult:
    """Train a LoRA on `backend.root`. Adapters are attached for the run and always removed.

    should_stop() is polled before each step; an exception of a type in interrupt_on raised during a step's
    forward/backward also ends the run. Either way the result holds the last completed step, interrupted=True.
    """
    # ComfyUI runs nodes under inference_mode: adapters, optimizer state and activations must be made outside it
    with torch.inference_mode(False), torch.enable_grad():
        return _train(backend, samples, config, on_step, should_stop, interrupt_on)


def usable_in_autograd(obj: Any) -> Any:
    """Copy inference-mode tensors (anywhere in dicts/lists/tuples) so autograd may save them."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.is_inference() else obj
    if isinstance(obj, dict):
        return {k: usable_in_autograd(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(usable_in_autograd(v) for v in obj)
    return obj


def _train(backend: Backend, samples: list[TrainSample], config: TrainConfig, on_step, should_stop,
           interrupt_on: tuple[type[BaseException], ...]) -> TrainResult:
    _validate(backend, samples, config)
    samples = [TrainSample(usable_in_autograd(s.latent), usable_in_autograd(s.cond), s.caption) for s in samples]
    device = torch.device(backend.device)
    gen = torch.Generator().manual_seed(config.seed)  # CPU generator: same draws on every device
    adapters = make_adapters(backend, config, gen)
    params = [p for a in adapters.values() for p in a.parameters()]
    optimizer = make_optimizer(params, config.learning_rate, config.weight_decay)
    scheduler = make_scheduler(optimizer, config.lr_schedule, config.warmup_steps, config.steps)
    scaler = grad_scaler(config.precision, device)
    order = SampleOrder(len(samples), gen)
    losses: list[float] = []
    per_step = config.batch_size * config.grad_accum
    fork_devices = [device] if device.type == "cuda" else []

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=fork_devices))
        torch.manual_seed(config.seed)  # adapter dropout uses the global RNG; fork_rng restores it after
        stack.enter_context(_frozen(backend.root))
        stack.enter_context(attached(backend.root, adapters))
        stack.enter_context(gradient_checkpointing(backend.root, config.gradient_checkpointing, config.guard_inplace))
        for step in range(config.steps):
            if should_stop is not None and should_stop():
                return _result(adapters, losses, interrupted=True)
            # draw the whole step's randomness up front: batch_size x grad_accum splits are then equivalent
            index = order.take(per_step)
            x0_all = torch.stack([samples[i].latent for i in index]).float()
            noise_all = torch.randn(x0_all.shape, generator=gen)
            u_all = sample_u(per_step, config.timestep_sampling, gen, config.logit_mean, config.logit_std)
            optimizer.zero_grad(set_to_none=True)
            micro_losses = []
            try:  # a host may cancel from inside the model's forward (ComfyUI's ops do)
                for m in range(config.grad_accum):
                    part = slice(m * config.batch_size, (m + 1) * config.batch_size)
                    x0 = x0_all[part].to(device)
                    conds = [samples[i].cond for i in index[part]]
                    with autocast(config.precision, device):
                        loss = diffusion_loss(backend, x0, noise_all[part].to(device), u_all[part], conds).mean()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise NonFiniteLossError(
                            f"loss became {value} at step {step + 1} (micro-step {m + 1}); "
                            f"the last good LoRA (after step {len(losses)}) is kept in .result",
                            _result(adapters, losses, interrupted=True),
                        )
                    scaler.scale(loss / config.grad_accum).backward()
                    micro_losses.append(value)
            except interrupt_on:
                # no optimizer step was taken for this step: the adapters hold the last completed one
                return _result(adapters, losses, interrupted=True)
            _clip_and_step(optimizer, scaler, params, config, step, adapters, losses)
            scheduler.step()
            losses.append(sum(micro_losses) / len(micro_losses))
            if on_step is not None:
                on_step(step + 1, config.steps, losses[-1])
    return _result(adapters, losses)


def _clip_and_step(optimizer, scaler, params, config: TrainConfig, step: int, adapters, losses) -> None:
    scaler.unscale_(optimizer)
    if config.max_grad_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    if not torch.isfinite(norm) and not scaler.is_enabled():  # fp16: the scaler skips the step itself
        raise NonFiniteLossError(
            f"gradient became {float(norm)} at step {step + 1}; the last good LoRA is kept in .result",
            _result(adapters, losses, interrupted=True),
        )
    scaler.step(optimizer)
    scaler.update()
