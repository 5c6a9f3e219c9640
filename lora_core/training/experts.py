"""Two experts in one run: Wan 2.2 A14B's high-noise and low-noise models, each with its own LoRA.

Wan 2.2 denoises with the high-noise expert while the model's timestep (sigma for flow models, shift included)
is at or above a boundary, and with the low-noise expert below it. One run trains both: each step's noise level,
drawn as a one-model run draws it, picks the expert that gets the step. Each expert is a Run of its own
(adapters, optimizer, LR schedule, EMA, generator, sample order, dropout RNG), so what an expert learns depends
on its own steps only, never on how the two interleave; that freedom is used to run the steps window by window,
one expert's steps then the other's (SWITCH_WINDOW), so that the experts switch rarely: only the expert in use
has to be on the device.

Randomness comes from the run's seed alone: the schedule (which expert and which noise levels each step gets) and
each expert's generator are seeded from it (derived_seed). A step's first noise level picks the side; its other
samples (batch, accumulation) are drawn again until they fall on that side, so every level keeps its distribution
on its side. The schedule is drawn step by step, so a longer run (a resume with more steps) extends it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from ..data.samples import TrainSample, usable_in_autograd
from ..errors import LoraLabError, TrainingError
from .backend import Backend
from .devices import fork_rng
from .failures import crashed, raise_clearly
from .run import Run, TrainResult
from .state import TrainState, restore_rng
from .timesteps import sampler, timestep_fraction
from .trainer import StepReport, TrainConfig, _validate, guarded_step, prepare_model

EXPERTS = ("high_noise", "low_noise")
SWITCH_WINDOW = 32  # schedule steps per window: at most one switch each (bench/expert_switch.py)
MAX_REDRAWS = 100_000  # a side this unlikely is a setting mistake, named by the error


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose of a run (decorrelated generators from one user seed)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:8], "little") & (2**63 - 1)


@dataclass
class Schedule:
    """Per step of the run: the expert it trains and its noise levels u (batch_size x grad_accum of them)."""

    experts: list[str]
    u: list[torch.Tensor]

    def steps_of(self, name: str) -> list[int]:
        return [i for i, e in enumerate(self.experts) if e == name]


def draw_schedule(backend: Backend, config: TrainConfig, boundary: float, steps: int) -> Schedule:
    """Which expert each of `steps` steps trains, and its levels, from the run's seed (the high expert's sigmas)."""
    draw = sampler(backend, config.timestep_options())
    generator = torch.Generator().manual_seed(derived_seed(config.seed, "schedule"))
    per_step = config.batch_size * config.grad_accum

    def high(u: torch.Tensor) -> bool:
        return bool(timestep_fraction(backend, backend.sigma_from_u(u), u)[0] >= boundary)

    experts, levels = [], []
    for _ in range(steps):
        first = draw(1, generator)
        side = high(first)
        found = [first]
        for _ in range(per_step - 1):
            for _ in range(MAX_REDRAWS):
                u = draw(1, generator)
                if high(u) == side:
                    found.append(u)
                    break
            else:
                raise TrainingError(f"boundary {boundary}: almost no noise level falls on the "
                                    f"{'high' if side else 'low'}-noise side; check boundary and timestep range")
        experts.append(EXPERTS[0] if side else EXPERTS[1])
        levels.append(torch.cat(found))
    return Schedule(experts, levels)


def execution_order(experts: list[str], window: int) -> list[int]:
    """The steps in the order they run: window by window, the expert that ran last goes on first."""
    order: list[int] = []
    current = experts[0] if experts else ""
    for start in range(0, len(experts), window):
        steps = range(start, min(start + window, len(experts)))
        mine = [i for i in steps if experts[i] == current]
        other = [i for i in steps if experts[i] != current]
        order += mine + other
        if other:
            current = experts[other[-1]]
    return order


@dataclass
class ExpertsResult:
    """Both experts' results, and the run as it went: the expert and loss of each completed step, in order."""

    results: dict[str, TrainResult]
    experts: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    interrupted: bool = False
    switches: int = 0  # times the device changed expert

    @property
    def steps_done(self) -> int:
        return len(self.losses)


class Switcher:
    """The expert on the device: use(name) asks the host to load it (activate) only when it changes."""

    def __init__(self, activate: Callable[[str], None] | None):
        self.activate, self.current, self.switches = activate, "", 0

    def use(self, name: str) -> None:
        if name != self.current:
            if self.current:
                self.switches += 1
            if self.activate is not None:
                self.activate(name)
            self.current = name


class RoutedBackend:
    """Both experts as one Backend (validation): each row goes to the expert its sigma belongs to."""

    def __init__(self, backends: dict[str, Backend], boundary: float, switcher: Switcher):
        self.backends, self.boundary, self.switcher = backends, boundary, switcher
        high = backends[EXPERTS[0]]
        self.root, self.prediction, self.device = high.root, high.prediction, high.device
        self.sigma_from_u, self.noisy, self.c_out = high.sigma_from_u, high.noisy, high.c_out
        if hasattr(high, "timestep_fraction"):
            self.timestep_fraction = high.timestep_fraction

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        high = (timestep_fraction(self.backends[EXPERTS[0]], sigma, sigma) >= self.boundary).tolist()
        out: list[torch.Tensor | None] = [None] * len(conds)
        for name, side in zip(EXPERTS, (True, False)):
            rows = [i for i, h in enumerate(high) if h == side]
            if rows:
                self.switcher.use(name)
                index = torch.tensor(rows, device=x_t.device)
                denoised = self.backends[name].denoise(x_t.index_select(0, index), sigma.index_select(0, index),
                                                       [conds[i] for i in rows])
                for row, i in enumerate(rows):
                    out[i] = denoised[row]
        return torch.stack(out)


def check_same_sampling(backends: dict[str, Backend]) -> None:
    """The experts must map noise levels to the same sigmas (one schedule routes both)."""
    u = torch.linspace(0.01, 0.99, 11)
    high, low = (backends[n].sigma_from_u(u).float().cpu() for n in EXPERTS)
    if not torch.allclose(high, low, rtol=1e-5, atol=1e-7):
        raise TrainingError("the two experts map noise levels to different sigmas (their model sampling or shift "
                            f"differ: {high[5].item():.4f} vs {low[5].item():.4f} at u = 0.5); give both the same "
                            "ModelSampling node")


def train_experts(backends: dict[str, Backend], samples: list[TrainSample], config: TrainConfig, boundary: float, *,
                  on_step: Callable[[StepReport], None] | None = None, should_stop: Callable[[], bool] | None = None,
                  interrupt_on: tuple[type[BaseException], ...] = (), order: Any = None,
                  resume: dict[str, TrainState] | None = None, validate: Callable[[int], float | None] | None = None,
                  switcher: Switcher | None = None) -> ExpertsResult:
    """Train one LoRA per expert (backends keyed by EXPERTS) over config.steps steps in all; as trainer.train for
    stops and errors (their result is an ExpertsResult). switcher: the host's Switcher(activate), whose activate(name)
    puts that expert on the device before its steps when the other one ran last. validate(step) runs with both
    LoRAs on; a RoutedBackend on the same switcher gives it a backend that uses each."""
    if set(backends) != set(EXPERTS):
        raise TrainingError(f"two-expert training needs the experts {', '.join(EXPERTS)}, got {', '.join(backends)}")
    if not 0.0 < boundary < 1.0:
        raise TrainingError(f"the expert boundary must be inside (0, 1), got {boundary}")
    with torch.inference_mode(False), torch.enable_grad():
        for backend in backends.values():
            _validate(backend, samples, config, order is not None)
        check_same_sampling(backends)
        samples = [TrainSample(usable_in_autograd(s.latent), usable_in_autograd(s.cond), s.caption,
                               usable_in_autograd(s.mask)) for s in samples]
        device = torch.device(backends[EXPERTS[0]].device)
        with fork_rng(device):
            schedule = draw_schedule(backends[EXPERTS[0]], config, boundary, config.steps)
            runs = {name: _expert_run(name, backends[name], samples, config, boundary, schedule, order,
                                      (resume or {}).get(name)) for name in EXPERTS}
            if resume is not None and set(resume) != set(EXPERTS):
                raise TrainingError("resuming two experts needs both their training states")
            return _Loop(runs, schedule, switcher or Switcher(None)).run(on_step, should_stop, interrupt_on, validate)


def _expert_run(name: str, backend: Backend, samples: list[TrainSample], config: TrainConfig, boundary: float,
                schedule: Schedule, order: Any, resume: TrainState | None) -> Run:
    """The expert's own Run: its seed, its share of the steps as its schedule's length, its noise levels given."""
    own = replace(config, seed=derived_seed(config.seed, name), steps=max(1, len(schedule.steps_of(name))),
                  identity={**config.identity, "expert": name, "boundary": boundary})
    run = Run(backend, samples, own, copy.deepcopy(order), resume)
    levels = [schedule.u[i] for i in schedule.steps_of(name)]
    run.sample_u = lambda n, generator: levels[len(run.losses)]  # the expert's k-th step gets its k-th levels
    return run


class _Loop:
    """Runs the schedule's steps in execution order; looks like one Run to failures.py (losses, updating, ...)."""

    def __init__(self, runs: dict[str, Run], schedule: Schedule, switcher: Switcher):
        self.runs, self.schedule, self.switcher = runs, schedule, switcher
        self.current = runs[EXPERTS[0]]
        self.experts: list[str] = []
        self.losses: list[float] = []
        self.order = execution_order(schedule.experts, SWITCH_WINDOW)
        done = {name: set(schedule.steps_of(name)[:len(run.losses)]) for name, run in runs.items()}
        taken = {name: 0 for name in runs}
        for i in self.order:  # a resumed run's history, as it ran
            name = schedule.experts[i]
            if i in done[name]:
                self.experts.append(name)
                self.losses.append(runs[name].losses[taken[name]])
                taken[name] += 1
        self.pending = [i for i in self.order if i not in done[schedule.experts[i]]]

    @property
    def updating(self) -> bool:
        return any(run.updating for run in self.runs.values())

    @property
    def optimizer(self):
        return self.current.optimizer

    @property
    def device(self) -> torch.device:
        return self.current.device

    def result(self, interrupted: bool = False) -> ExpertsResult:
        return ExpertsResult({n: r.result(interrupted) for n, r in self.runs.items()}, list(self.experts),
                             list(self.losses), interrupted, self.switcher.switches)

    @contextlib.contextmanager
    def evaluating(self):
        with contextlib.ExitStack() as stack:
            for run in self.runs.values():
                stack.enter_context(run.evaluating())
            yield

    def run(self, on_step, should_stop, interrupt_on, validate) -> ExpertsResult:
        total = len(self.schedule.experts)
        with contextlib.ExitStack() as stack:
            for run in self.runs.values():
                prepare_model(stack, run)
            for i in self.pending:
                if should_stop is not None and should_stop():
                    return self.result(interrupted=True)
                name = self.schedule.experts[i]
                self.current = run = self.runs[name]

                def enter(name=name, run=run) -> None:  # this expert on the device, with its own streams (dropout too)
                    self.switcher.use(name)
                    restore_rng(run.boundary[0], run.gen, run.device)

                loss = guarded_step(run, interrupt_on, owner=self, before=enter)
                if loss is None:
                    return self.result(interrupted=True)
                self.experts.append(name)
                self.losses.append(loss)
                if self._after_step(name, loss, total, on_step, validate, interrupt_on):
                    return self.result(interrupted=True)
        return self.result()

    def _after_step(self, name: str, loss: float, total: int, on_step, validate, interrupt_on) -> bool:
        """Validation and the host's hooks; True when the host interrupted."""
        step = len(self.losses)
        try:
            val_loss = None
            if validate is not None:
                with self.evaluating():
                    val_loss = validate(step)
            if on_step is not None:
                on_step(StepReport(step, total, loss, self.current.lr(), val_loss, snapshot=self.result,
                                   evaluating=self.evaluating, expert=name))
        except interrupt_on:
            return True
        except LoraLabError:
            raise
        except Exception as error:  # a failed save or preview: the step itself is complete
            if isinstance(error, RuntimeError):
                raise_clearly(error, self, "after")
            raise crashed(error, self, "after") from error
        return False
