"""One training run: its adapters, optimizer, schedule and RNGs; step() does one optimizer step from draws made
up front, state() captures everything to continue between steps, result() what it has learnt so far."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..adapters.lora_weights import LoraWeights
from ..data.sample_order import BatchOrder, EpochShuffle
from ..data.samples import TrainSample, batch_masks, draw_cond
from ..errors import NonFiniteLossError, TrainingError
from ..optimizers import evaluation_weights
from .backend import Backend
from .devices import fork_rng
from .ema import ema_weights, make_ema
from .fingerprint import check_same_run, run_fingerprint
from .noise import sample_noise
from .objective import diffusion_loss
from .precision import autocast, compute_dtype, dtype_name
from .preservation import Preservation, attach_fingerprint
from .run_setup import make_adapters, optimizer_and_schedule, param_groups
from .state import TrainState, copied_to_cpu, restore_rng, rng_state
from .timesteps import sampler

if TYPE_CHECKING:
    from .trainer import TrainConfig


@dataclass
class TrainResult:
    lora: LoraWeights
    losses: list[float] = field(default_factory=list)  # one per optimizer step: mean of its micro-steps
    steps_done: int = 0
    interrupted: bool = False
    state: TrainState | None = None  # to continue the run exactly (taken after the last completed step)
    compute_dtype: str = "fp32"  # the dtype the model's layers actually computed in
    checkpointing: str = "off"  # what gradient checkpointing did: off, full (N units), partial (...), nothing to wrap
    compiled: str = "off"  # what torch.compile did: off, on, or its fall-back (compiled_units.CompileStats.outcome)
    compile_report: str = ""  # what compiling cost: graphs, input shapes, seconds
    warnings: list[str] = field(default_factory=list)


class Run:
    """One training run's objects; step() does one optimizer step, state() captures it between steps."""

    def __init__(self, backend: Backend, samples: list[TrainSample], config: TrainConfig, order: BatchOrder | None,
                 resume: TrainState | None, distributed: Any = None, preservation: Preservation | None = None):
        self.backend, self.samples, self.config = backend, samples, config
        self.preservation = preservation if preservation is not None and preservation.active else None
        if self.preservation is not None:
            self.preservation.check(len(samples), config.train_text_encoder)
        self.attachment: Any = None  # the attached adapters (trainer._loop): preservation switches them off
        self.dist = distributed  # distributed.Distributed: this rank's slice of each batch, grads averaged
        self.device = torch.device(backend.device)
        self.gen = torch.Generator().manual_seed(config.seed)  # CPU generator: same draws on every device
        self.adapters = make_adapters(backend, config, self.gen)
        groups = param_groups(self.adapters, config)
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer, self.scheduler = optimizer_and_schedule(groups, config)
        self.ema = make_ema(self.params, config.ema_decay) if config.ema_decay else None
        self.sample_u = sampler(backend, config.timestep_options())
        self.fingerprint = attach_fingerprint(run_fingerprint(config, samples), self.preservation)
        self.compute_dtype = compute_dtype(config.precision, getattr(backend, "compute_dtype", torch.float32))
        # fp16 gradients underflow without loss scaling, whether autocast or the model's own dtype made them fp16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.compute_dtype == torch.float16)
        self.order = order or EpochShuffle(len(samples), int(self.gen.initial_seed()) + 1)
        self.losses: list[float] = []
        self.updating = False
        self.checkpointing = "off"
        self.compile_stats = None  # compiled_units.CompileStats while the units are compiled
        self.warnings: list[str] = []
        torch.manual_seed(config.seed)  # adapter dropout uses the global RNG (forked by the caller)
        if resume is not None:
            self._restore(resume)
        self.boundary = self._boundary()

    # --- state ------------------------------------------------------------------------------------
    def _boundary(self) -> tuple[dict, dict]:
        return rng_state(self.gen, self.device), self.order.state_dict()

    def state(self) -> TrainState:
        """Between steps, outside evaluating(): the live (training) weights and everything to continue."""
        rng, order = self.boundary
        return TrainState(
            step=len(self.losses), losses=list(self.losses), rng=rng, order=order,
            adapters={f"{n}::{k}": v.detach().cpu().clone() for n, a in self.adapters.items() for k, v in a.state_dict().items()},
            optimizer=copied_to_cpu(self.optimizer.state_dict()), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), fingerprint=self.fingerprint,
            ema=None if self.ema is None else copied_to_cpu(self.ema.state_dict()),
        )

    @contextlib.contextmanager
    def final_weights(self):
        """The adapters hold the weights to save or evaluate inside (EMA / schedule-free average)."""
        with evaluation_weights(self.config.optimizer, self.optimizer, self.params):
            if self.ema is None:
                yield
            else:
                with ema_weights(self.ema, self.params):
                    yield

    @contextlib.contextmanager
    def evaluating(self):
        """final_weights, dropout off, no grad, and every RNG the run draws from restored after."""
        device = torch.device(self.backend.device)
        gen_state = self.gen.get_state()
        with fork_rng(device), torch.no_grad(), self.final_weights():
            for a in self.adapters.values():
                a.eval()
            try:
                yield
            finally:
                for a in self.adapters.values():
                    a.train()
                self.gen.set_state(gen_state)

    def _restore(self, state: TrainState) -> None:
        check_same_run(state.fingerprint, self.fingerprint)
        for name, adapter in self.adapters.items():
            own = {k.split("::", 1)[1]: v for k, v in state.adapters.items() if k.split("::", 1)[0] == name}
            if set(own) != set(adapter.state_dict()):
                raise TrainingError(f"the training state has no adapter for {name!r}: it belongs to another run")
            adapter.load_state_dict(own)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        self.order.load_state_dict(state.order)
        if self.ema is not None:
            if state.ema is None:
                raise TrainingError("cannot resume with EMA on from a state made without EMA")
            self.ema.load_state_dict(state.ema)
        restore_rng(state.rng, self.gen, self.device)
        self.losses = list(state.losses)

    def result(self, interrupted: bool = False) -> TrainResult:
        state = self.state()
        with self.final_weights():
            lora = LoraWeights({n: a.weights() for n, a in self.adapters.items()})
        return TrainResult(lora=lora, losses=list(self.losses), steps_done=len(self.losses), interrupted=interrupted,
                           state=state, compute_dtype=dtype_name(self.compute_dtype), checkpointing=self.checkpointing,
                           compiled=self.compile_stats.outcome() if self.compile_stats and self.compile_stats.units
                           else "off", compile_report=self.compile_stats.report() if self.compile_stats
                           and self.compile_stats.units else "", warnings=list(self.warnings))

    def calibration_pass(self) -> None:
        """One forward without grad of a fixed batch, what the partial-checkpointing plan is measured on: the
        first of the largest latents, a micro-batch of it, fixed noise at the middle noise level. Draws nothing
        from the run's RNGs (dropout's are restored), so the plan is the same for a resumed run."""
        c = self.config
        i = max(range(len(self.samples)), key=lambda j: (self.samples[j].latent.numel(), -j))
        n = c.batch_size if self.dist is None else max(1, c.batch_size // self.dist.world_size)
        gen = torch.Generator().manual_seed(0)
        x0 = torch.stack([self.samples[i].latent] * n).float().to(self.device)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        conds = [draw_cond(self.samples[i].cond, gen)] * n
        with fork_rng(self.device), torch.no_grad(), autocast(c.precision, self.device):
            diffusion_loss(self.backend, x0, noise, torch.full((n,), 0.5), conds, c.loss)

    # --- one optimizer step ---------------------------------------------------------------------------
    def _draw(self) -> list[tuple[list[int], list[torch.Tensor], torch.Tensor, list[Any]]]:
        """The whole step's randomness, up front: per micro-batch its samples, noise, noise levels and conds."""
        c = self.config
        batches = [self.order.next_batch(c.batch_size) for _ in range(c.grad_accum)]
        noise = [[sample_noise(self.samples[i].latent, self.gen, c.loss) for i in batch] for batch in batches]
        u = self.sample_u(c.batch_size * c.grad_accum, self.gen)
        conds = [[draw_cond(self.samples[i].cond, self.gen) for i in batch] for batch in batches]
        return [(batch, noise[m], u[m * c.batch_size:(m + 1) * c.batch_size], conds[m]) for m, batch in enumerate(batches)]

    def _local_draws(self) -> list[tuple[list[int], list[torch.Tensor], torch.Tensor, list[Any]]]:
        """The step's draws (the same on every rank), cut to this rank's slice of each micro-batch."""
        draws = self._draw()
        if self.dist is None:
            return draws
        self.dist.seed_step(self.config.seed, len(self.losses))
        return [self.dist.shard(*d) for d in draws]

    def step(self) -> float:
        step = len(self.losses)
        micro_losses = []
        self.optimizer.zero_grad(set_to_none=True)
        for m, (batch, noise, u, conds) in enumerate(self._local_draws()):
            x0 = torch.stack([self.samples[i].latent for i in batch]).float().to(self.device)
            masks = batch_masks([self.samples[i] for i in batch])
            with autocast(self.config.precision, self.device):
                loss = self._loss(batch, x0, torch.stack(noise).to(self.device), u, conds, masks).mean()
            value = float(loss.detach()) if self.dist is None else self.dist.mean(float(loss.detach()))
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss became {value} at step {step + 1} (micro-step {m + 1})",
                                         self.result(interrupted=True))
            self.scaler.scale(loss / self.config.grad_accum).backward()
            micro_losses.append(value)
        self.updating = True  # from here until the step is recorded, the adapters match no saved state
        self._clip_and_step(step)
        self.scheduler.step()
        self.losses.append(sum(micro_losses) / len(micro_losses))
        self.boundary = self._boundary()
        self.updating = False
        return self.losses[-1]

    def _loss(self, batch: list[int], x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor,
              conds: list[Any], masks: torch.Tensor | None) -> torch.Tensor:
        if self.preservation is None:
            return diffusion_loss(self.backend, x0, noise, u, conds, self.config.loss, masks)
        return self.preservation.loss(self.backend, self.attachment, batch, x0, noise, u, conds, self.config.loss,
                                      masks)

    def _clip_and_step(self, step: int) -> None:
        if self.dist is not None:
            self.dist.reduce_grads(self.params)
        self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
        if not torch.isfinite(norm) and not self.scaler.is_enabled():  # fp16: the scaler skips the step itself
            raise NonFiniteLossError(f"gradient became {float(norm)} at step {step + 1}", self.result(interrupted=True))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.step(self.params)

    def lr(self) -> float:
        """The step size of the first group as the optimizer applies it (Prodigy: lr x its estimate d)."""
        group = self.optimizer.param_groups[0]
        lr = group["lr"] if group["lr"] is not None else self.scheduler.get_last_lr()[0]
        return float(lr) * float(group.get("d", 1.0))
