"""torch.compile on the units each architecture's forward calls (checkpoint_units), not on the whole model.

The model's own forward stays eager, so the host's wrappers around it (ComfyUI's model_function_wrapper, its
diffusion-model wrappers, block replacements in transformer_options) run as they always do and call the
compiled units; inside a unit, everything the unit's forward calls is compiled with it: the host's patches
read from its arguments and the LoRA side paths (forward hooks on its layers). Frozen layers are left to
the compiler to differentiate (the eager formulas of frozen_layers.py step aside; the compiler saves or
recomputes a cast weight as its partitioner decides, and slices nothing).

    * Only training calls are compiled (while `stats.training` is set: the trainer sets it for each step);
      previews and validation between steps run the same units eagerly, at their own sizes, with no compile.
    * Static shapes: each new input shape (an aspect bucket, a last smaller batch) compiles once per unit
      variant and grad mode, and is counted. Past MAX_SHAPES shapes a unit runs eagerly for new ones. Units
      of one class and geometry share their code, and so do later runs in the same process (same backend
      callable): a second run of the same model and sizes compiles nothing.
    * A unit class whose compilation fails (no C++ compiler, an operation the compiler refuses) runs eagerly
      from then on, and the run says so once per class: a failed compile costs time, never the run. The
      failing call is rerun eagerly on the same inputs, after checking (version counters) that no compiled
      part before a graph break wrote them in place. Seen on the CPU: ComfyUI's CPU attention asks psutil for
      free memory (a graph break), and after that break Flux's blocks add to a graph input in place that a
      norm saved, which AOTAutograd refuses; its blocks then run eagerly.
    * Checkpointing wraps the compiled forward: its first pass runs the no-grad graph, its recomputation the
      training graph. The in-place guard's saved-tensor hook sits outside the compiled call and sees what the
      compiled code saves.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..errors import TrainingError
from .forward_patches import replace_forward, restore_forwards
from .frozen_layers import aliased

MAX_SHAPES = 16  # distinct input shapes compiled per unit; more run eagerly
DEFAULT_BACKEND: str | Callable[..., Any] = "inductor"  # a torch.compile backend name (or function)


@dataclass
class CompileStats:
    """What compiling did, for the result, the metadata and the log."""

    units: int = 0
    graphs: int = 0  # graphs the compiler built (a graph break makes more than one per call)
    shapes: set = field(default_factory=set)  # distinct input shapes the units were compiled for
    seconds: float = 0.0  # wall time of the calls that compiled (one run of the unit each included)
    failed: dict = field(default_factory=dict)  # unit class -> why compiling it failed (its units then run eagerly)
    eager_units: int = 0
    training: bool = False

    def outcome(self) -> str:
        """What ran, for the LoRA's metadata: the same for the same settings and model (no counts, no times)."""
        why = "; ".join(f"{name}: {reason}" for name, reason in self.failed.items())
        if self.failed and self.eager_units == self.units:
            return f"failed, ran eagerly ({why})"
        return "on" + (f" ({', '.join(self.failed)} eager after a failed compile: {why})" if why else "")

    def report(self) -> str:
        """What compiling cost this run, for the log and the result."""
        return (f"{self.units} units, {self.graphs} graphs compiled for {len(self.shapes)} input shapes in "
                f"{self.seconds:.1f} s" + (f", {self.eager_units} units eager" if self.eager_units else ""))


def _shape_key(args: tuple, kwargs: dict) -> tuple:
    return tuple((tuple(t.shape), t.dtype) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))


_BACKENDS: dict[Any, tuple[Any, Callable[..., Any]]] = {}
_RUNS: list[CompileStats] = []  # the run whose compiles are being counted (innermost last)


def _counting_backend(name: str | Callable[..., Any]) -> Callable[..., Any]:
    """The named torch.compile backend, counting the graphs it is given for the run in progress. One callable
    per backend for the life of the process: the compiler keys its cache on it, so a second run of the same
    model and shapes reuses the first run's code (and counts no graph)."""
    key = name if isinstance(name, str) else id(name)
    if key not in _BACKENDS:
        from torch._dynamo import lookup_backend

        inner = lookup_backend(name)

        def backend(graph, example_inputs):
            if _RUNS:
                _RUNS[-1].graphs += 1
            return inner(graph, example_inputs)

        _BACKENDS[key] = (name, backend)  # the name is kept too: a callable's id stays its own
    return _BACKENDS[key][1]


def _reason(error: BaseException) -> str:
    """The compiler's own error in one line (a backend's failure comes wrapped in BackendCompilerFailed)."""
    cause = getattr(error, "inner_exception", None) or error
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0].strip()[:200] if lines else ''}"


def _versions(args: tuple, kwargs: dict) -> list[int]:
    return [t._version for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]


def _compile_errors() -> tuple[type[BaseException], ...]:
    import torch._dynamo.exc as exc

    return (exc.TorchDynamoException,)


def _tensor_slots(unit: nn.Module) -> list[tuple[dict, str]]:
    return [(table, name) for m in unit.modules() for table in (m._parameters, m._buffers) for name in table]


def _compiled_forward(unit: nn.Module, forward: Callable[..., Any], stats: CompileStats, backend: Callable[..., Any],
                      warn: Callable[[str], None]) -> Callable[..., Any]:
    compiled = torch.compile(forward, backend=backend, dynamic=False)
    slots = _tensor_slots(unit)
    shapes: set[tuple] = set()
    errors = _compile_errors()

    kind = type(unit).__name__
    state = {"eager": False}

    def run(*args, **kwargs):
        key = (_shape_key(args, kwargs), torch.is_grad_enabled())
        if kind in stats.failed and not state["eager"]:
            state["eager"] = True  # another unit of its class failed to compile: this one would too
            stats.eager_units += 1
        if state["eager"] or not stats.training or (key not in shapes and len(shapes) >= MAX_SHAPES):
            return forward(*args, **kwargs)
        shapes.add(key)
        stats.shapes.add(key[0])
        before, started, versions = stats.graphs, time.perf_counter(), _versions(args, kwargs)
        try:
            # the host's inference-tensor weights, which autograd may not save, as aliases for the call: the
            # frozen-layer wrappers that do this layer by layer in eager mode step aside in compiled code
            with aliased(slots if torch.is_grad_enabled() else []):
                out = compiled(*args, **kwargs)
        except errors as error:
            if _versions(args, kwargs) != versions:  # compiled code ran up to a graph break and wrote an input
                raise TrainingError(f"torch.compile failed part-way through a {kind} after it had changed its "
                                    f"inputs in place ({_reason(error)}); train without compile") from error
            stats.failed[kind] = _reason(error)
            state["eager"] = True
            stats.eager_units += 1
            warn(f"torch.compile failed for {kind}, which runs without it from now on: {stats.failed[kind]}")
            return forward(*args, **kwargs)
        if stats.graphs > before:
            stats.seconds += time.perf_counter() - started
        return out

    return run


@contextlib.contextmanager
def _compiler_settings(units: int) -> Iterator[None]:
    """Room for every unit variant x shape x grad mode in the compiler's caches (its default, 8 per function,
    would silently send SD's 25 ResBlocks back to eager), and the backward compiled with the forward, so that
    its cost and its failures show where the forward's do. Restored after."""
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    limit = max(64, 2 * units * MAX_SHAPES)
    settings = [(dynamo_config, "recompile_limit", limit), (dynamo_config, "cache_size_limit", limit),
                (dynamo_config, "accumulated_recompile_limit", 8 * limit),
                (dynamo_config, "accumulated_cache_size_limit", 8 * limit),
                (functorch_config, "force_non_lazy_backward_lowering", True)]
    with contextlib.ExitStack() as stack:
        for config, name, value in settings:
            if hasattr(config, name):  # names differ between torch versions
                stack.enter_context(config.patch(**{name: value}))
        yield


@contextlib.contextmanager
def compiled_units(units: list[nn.Module], enabled: bool, backend: str | Callable[..., Any] | None = None,
                   warn: Callable[[str], None] | None = None) -> Iterator[CompileStats]:
    """Replace each unit's forward by its compiled form for the duration (see the module docstring); yields
    the stats, whose `training` flag the caller sets around training steps. Restored in finally."""
    stats = CompileStats()
    if not enabled or not units:
        yield stats
        return
    warn = warn or (lambda message: logging.getLogger("lora_lab").warning("LoRA Lab: %s", message))
    counting = _counting_backend(backend or DEFAULT_BACKEND)
    saved: list[tuple[nn.Module, object]] = []
    _RUNS.append(stats)
    try:
        with _compiler_settings(len(units)):
            for unit in units:
                replace_forward(unit, _compiled_forward(unit, unit.forward, stats, counting, warn), saved)
            stats.units = len(units)
            yield stats
    finally:
        restore_forwards(saved)
        _RUNS.remove(stats)
