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
import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .adapters import Adapter, adapter_from_weights, new_adapter
from .backend import Backend
from .checkpointing import gradient_checkpointing
from .devices import empty_cache, fork_rng
from .ema import ema_weights, make_ema
from .errors import LoraLabError, NonFiniteLossError, TrainingCrashed, TrainingError, TrainingOutOfMemory
from .fingerprint import check_same_run, run_fingerprint
from .frozen_layers import explain_inference_error, frozen_base, plain_fetch, plain_stored, torch_plain
from .injection import attached
from .loss_options import LossOptions
from .lora_weights import LoraWeights, split_component
from .lr_schedule import make_scheduler, self_schedule
from .objective import diffusion_loss
from .optimizers import evaluation_weights, make_optimizer
from .precision import autocast, compute_dtype, dtype_name
from .sample_order import BatchOrder, EpochShuffle
from .noise import sample_noise
from .targets import select_targets
from .timesteps import TimestepOptions, sampler
from .train_state import TrainState, restore_rng, rng_state
from .trainer_checks import check_train_config, optimizer_settings


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
    weight_decay: float | None = None  # None: the optimizer's default (AdamW: 0.01)
    init_lora: LoraWeights | None = None  # start from these weights instead of a fresh init
    algorithm: str = "lora"  # lora | loha | lokr | dora (adapters.ALGORITHMS)
    algorithm_options: dict[str, Any] = field(default_factory=dict)  # lokr: factor, decompose_both; dora: axis
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


@dataclass
class TrainResult:
    lora: LoraWeights
    losses: list[float] = field(default_factory=list)  # one per optimizer step: mean of its micro-steps
    steps_done: int = 0
    interrupted: bool = False
    state: TrainState | None = None  # to continue the run exactly (taken after the last completed step)
    compute_dtype: str = "fp32"  # the dtype the model's layers actually computed in
    checkpointing: str = "off"  # what gradient checkpointing did: off, on (N units), or nothing to wrap
    warnings: list[str] = field(default_factory=list)


def _validate(backend: Backend, samples: list[TrainSample], config: TrainConfig, order_given: bool) -> None:
    missing = [m for m in ("root", "prediction", "device", "sigma_from_u", "noisy", "denoise", "c_out") if not hasattr(backend, m)]
    if missing:
        raise TrainingError(f"{type(backend).__name__} is not a Backend: it lacks {', '.join(missing)}")
    if config.train_text_encoder and not getattr(backend, "text_encoders", None):
        raise TrainingError("train_text_encoder needs a text encoder: this backend has none (connect a CLIP)")
    check_train_config(config)
    if not samples:
        raise TrainingError("no training samples")
    shapes = {tuple(s.latent.shape) for s in samples}
    if len(shapes) > 1 and config.batch_size > 1 and not order_given:
        raise TrainingError(f"batch_size > 1 needs latents of one shape (or aspect buckets), got {sorted(shapes)}")


def roots(backend: Backend, config: TrainConfig) -> dict[str, torch.nn.Module]:
    """Module trees that get adapters: "" is the diffusion model; text encoders by component (te1, ...)."""
    out = {"": backend.root}
    if config.train_text_encoder:
        out.update(getattr(backend, "text_encoders", {}) or {})
    return out


def make_adapters(backend: Backend, config: TrainConfig, generator: torch.Generator) -> dict[str, Adapter]:
    fetch = getattr(backend, "fetch_weight", plain_fetch)
    trees = roots(backend, config)
    modules = {(f"{c}:{n}" if c else n): m for c, tree in trees.items() for n, m in tree.named_modules()}
    if config.init_lora is not None:
        missing = [n for n in config.init_lora.modules if n not in modules]
        if missing:
            raise TrainingError(f"the LoRA to continue from has modules this model lacks: {', '.join(missing[:5])}")
        adapters = {n: adapter_from_weights(modules[n], w, fetch) for n, w in config.init_lora.modules.items()}
        for a in adapters.values():
            a.dropout = torch.nn.Dropout(config.dropout) if config.dropout > 0 else torch.nn.Identity()
    else:
        adapters = {n: new_adapter(modules[n], config.rank, config.alpha, config.dropout, generator, config.algorithm,
                                   fetch, n, **config.algorithm_options) for n in target_names(backend, config)}
    return {n: a.to(backend.device).train() for n, a in adapters.items()}


def target_names(backend: Backend, config: TrainConfig) -> list[str]:
    """The layers that get a new adapter: the diffusion model's targets, then each text encoder's as component:name."""
    names = list(select_targets(backend.root, config.targets))
    for component, tree in roots(backend, config).items():
        if component:
            names += [f"{component}:{n}" for n in select_targets(tree, config.text_encoder_targets)]
    return names


def adapter_parameter_count(backend: Backend, config: TrainConfig) -> int:
    """Trainable values the run will have, for the memory plan, without allocating them: each adapter is built on
    the meta device from its layer's geometry. DoRA reads its layer's weight norms when built, so it is counted
    as its LoRA plus one magnitude per channel of its axis."""
    trees = roots(backend, config)
    modules = {(f"{c}:{n}" if c else n): m for c, tree in trees.items() for n, m in tree.named_modules()}
    algorithm = "lora" if config.algorithm == "dora" else config.algorithm
    options = {} if config.algorithm == "dora" else config.algorithm_options
    total = 0
    for name in target_names(backend, config):
        with torch.device("meta"):
            adapter = new_adapter(modules[name], config.rank, config.alpha, 0.0, torch.Generator(), algorithm,
                                  None, name, **options)
        total += sum(p.numel() for p in adapter.parameters())
        if config.algorithm == "dora":
            geo = adapter.geometry
            total += geo.out_features if config.algorithm_options.get("axis", "input") == "output" else geo.in_features
    return total


def param_groups(adapters: dict[str, Adapter], config: TrainConfig) -> list[dict[str, Any]]:
    """The diffusion model's adapters at learning_rate, the text encoders' at text_encoder_lr."""
    model = [p for n, a in adapters.items() if split_component(n)[0] == "model" for p in a.parameters()]
    text = [p for n, a in adapters.items() if split_component(n)[0] != "model" for p in a.parameters()]
    groups = [{"params": model, "lr": config.learning_rate, "name": "model"}]
    if text:
        lr = config.text_encoder_lr if config.text_encoder_lr is not None else config.learning_rate
        groups.append({"params": text, "lr": lr, "name": "text encoder"})
    return [g for g in groups if g["params"]]


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
                 resume: TrainState | None, distributed: Any = None):
        self.backend, self.samples, self.config = backend, samples, config
        self.dist = distributed  # distributed.Distributed: this rank's slice of each batch, grads averaged
        self.device = torch.device(backend.device)
        self.gen = torch.Generator().manual_seed(config.seed)  # CPU generator: same draws on every device
        self.adapters = make_adapters(backend, config, self.gen)
        groups = param_groups(self.adapters, config)
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer, self.scheduler = _optimizer_and_schedule(groups, config)
        self.ema = make_ema(self.params, config.ema_decay) if config.ema_decay else None
        self.sample_u = sampler(backend, config.timestep_options())
        self.fingerprint = run_fingerprint(config, samples)
        self.compute_dtype = compute_dtype(config.precision, getattr(backend, "compute_dtype", torch.float32))
        # fp16 gradients underflow without loss scaling, whether autocast or the model's own dtype made them fp16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.compute_dtype == torch.float16)
        self.order = order or EpochShuffle(len(samples), int(self.gen.initial_seed()) + 1)
        self.losses: list[float] = []
        self.updating = False
        self.checkpointing = "off"
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
            optimizer=_copied(self.optimizer.state_dict()), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), fingerprint=self.fingerprint,
            ema=None if self.ema is None else _copied(self.ema.state_dict()),
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
                           warnings=list(self.warnings))

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
            with autocast(self.config.precision, self.device):
                loss = diffusion_loss(self.backend, x0, torch.stack(noise).to(self.device), u, conds, self.config.loss).mean()
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


def _copied(obj: Any) -> Any:
    """Deep copy of a state dict's tensors (optimizers hand out their live state), on the CPU as a state file
    holds them: taking it needs no device memory, which an out-of-memory stop lacks."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _copied(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copied(v) for v in obj)
    return obj


def _optimizer_and_schedule(groups: list[dict[str, Any]], config: TrainConfig):
    spec, settings = optimizer_settings(config)  # check_train_config has checked them
    optimizer = make_optimizer(config.optimizer, groups, settings)
    if spec.schedule_free:
        return optimizer, make_scheduler(optimizer, "constant", 0, config.steps)
    if spec.self_scheduled({**spec.defaults, **settings}):
        return optimizer, self_schedule(optimizer)
    return optimizer, make_scheduler(optimizer, config.lr_schedule, config.warmup_steps, config.steps, config.lr_cycles)


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
) -> TrainResult:
    """Train a LoRA on `backend.root`. Adapters and layer wrappers are attached for the run and always removed.

    should_stop() is polled before each step; an exception of a type in interrupt_on raised during a step's
    forward/backward also ends the run. Either way the result holds the last completed step, interrupted=True,
    and its .state continues the run. A NaN loss raises NonFiniteLossError, running out of memory
    TrainingOutOfMemory and any other exception TrainingCrashed, all carrying that result. validate(step) may return a validation loss for the report.
    distributed (lora_core.distributed.Distributed): data-parallel, this process computes its rank's slice.
    """
    # ComfyUI runs nodes under inference_mode: adapters, optimizer state and activations must be made outside it
    with torch.inference_mode(False), torch.enable_grad():
        _validate(backend, samples, config, order is not None)
        samples = [TrainSample(usable_in_autograd(s.latent), usable_in_autograd(s.cond), s.caption) for s in samples]
        device = torch.device(backend.device)
        with fork_rng(device):
            run = _Run(backend, samples, config, order, resume, distributed)
            return _loop(run, on_step, should_stop, interrupt_on, validate)


def _loop(run: _Run, on_step, should_stop, interrupt_on, validate) -> TrainResult:
    backend, config = run.backend, run.config
    trees = roots(backend, config)
    with contextlib.ExitStack() as stack:
        for tree in trees.values():
            stack.enter_context(_frozen(tree))
            stack.enter_context(frozen_base(tree, getattr(backend, "fetch_weight", plain_fetch),
                                            getattr(backend, "is_plain", torch_plain),
                                            getattr(backend, "stored_weights", plain_stored)))
        stack.enter_context(attached(trees, run.adapters))
        modules = dict(backend.root.named_modules())
        units = stack.enter_context(gradient_checkpointing(backend.root, config.gradient_checkpointing,
                                                           config.guard_inplace,
                                                           adapted=[modules[n] for n in run.adapters if ":" not in n]))
        if config.gradient_checkpointing:
            _note_checkpointing(run, units, type(backend.root).__name__)
        for component, tree in trees.items():  # text encoders: no checkpointing, but ComfyUI's CLIP adds in place
            if component:
                stack.enter_context(gradient_checkpointing(tree, False, config.guard_inplace))
        while len(run.losses) < config.steps:
            if should_stop is not None and should_stop():
                return run.result(interrupted=True)
            try:  # a host may cancel from inside the model's forward (ComfyUI's ops do)
                loss = run.step()
            except interrupt_on:
                # no optimizer step was taken for this step: the adapters hold the last completed one
                return run.result(interrupted=True)
            except LoraLabError:
                raise  # NaN (carries its result) or a named bad input
            except Exception as error:
                if isinstance(error, RuntimeError):
                    _raise_clearly(error, run, "during")
                raise _crashed(error, run, "during") from error
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
                        _raise_clearly(error, run, "after")
                    raise _crashed(error, run, "after") from error
    return run.result()


def _note_checkpointing(run: _Run, units: int, model: str) -> None:
    """Record what checkpointing did; wrapping nothing (an architecture it does not know) is said, not hidden."""
    run.checkpointing = f"on ({units} units)" if units else "requested, but no block was found to wrap"
    if not units:
        warning = (f"gradient checkpointing wrapped nothing: no block list was found in {model}, so this run keeps "
                   "every activation (as with checkpointing off)")
        run.warnings.append(warning)
        logging.getLogger("lora_lab").warning("LoRA Lab: %s", warning)


def _when(run: _Run, when: str) -> str:
    """Where in the run an error struck. Inside the optimizer update the LoRA is partly updated and matches no
    step, so nothing can be kept from memory (the result is None then): the message says so."""
    done = len(run.losses)
    if when == "after":
        return f"after step {done}"
    if run.updating:
        return (f"while updating the LoRA for step {done + 1} (the LoRA was partly updated and matches no step, "
                f"so this run cannot be saved from memory; files save_every wrote stand)")
    return f"during step {done + 1}"


def _kept(run: _Run) -> TrainResult | None:
    return None if run.updating else run.result(interrupted=True)


def _crashed(error: BaseException, run: _Run, when: str) -> TrainingCrashed:
    """Any unexpected exception: carry the last completed step so the host can save it and its state."""
    return TrainingCrashed(f"training failed {_when(run, when)}: {type(error).__name__}: {error}", _kept(run))


def _raise_clearly(error: BaseException, run: _Run, when: str) -> None:
    if is_out_of_memory(error):
        run.optimizer.zero_grad(set_to_none=True)
        traceback.clear_frames(error.__traceback__)  # the failed step's activations, held by its frames
        empty_cache(run.device)
        advice = OOM_ADVICE + ("; or validate and preview less often or smaller (validation_every, previews)"
                               if when == "after" else "")
        raise TrainingOutOfMemory(f"out of memory {_when(run, when)}; {advice}", _kept(run)) from error
    clear = explain_inference_error(error)
    if clear is not None:
        raise clear from error
