"""Frozen base layers that back-propagate without keeping (or copying) their weights.

To pass gradients back through a frozen layer, autograd normally saves its weight. With a model shared
by the rest of a ComfyUI graph that goes wrong twice: the loaders' weights are inference tensors, which
autograd refuses to save, and weights cast in forward (partial loading, manual_cast, fp8/bf16 storage)
would be kept as full-size copies until backward. So, for the duration of training:

  * Linear and Conv layers run their own forward unchanged (under no_grad), save nothing, and fetch the
    weight again in backward:
        Linear:  dx = g W                 ConvNd:  dx = conv_transpose(g, W)  (torch.nn.grad.convNd_input)
    The fetch is the backend's (ComfyUI casts exactly as the layer's forward does, patches included). Where
    that cast is a plain dtype conversion of the stored weight, large layers are computed (forward and
    backward) one slice of output channels at a time, so only a slice is ever cast.
  * Every other module that owns parameters or buffers directly (norm scales, modulation tables, ...)
    sees, during its own forward only, zero-copy non-inference aliases of those tensors, so autograd may
    save them. No parameter of the model is ever replaced outside that call, so the model the rest of
    the graph sees, its dtype bookkeeping and its pinned memory are untouched.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError
from ..adapters.layer_kinds import is_linear
from .forward_patches import replace_forward, restore_forwards

# (module, like) -> (weight, bias, release): the layer's effective weight and bias, cast to like's dtype and
# device; release() is called once the backward no longer needs them.
WeightFetch = Callable[[nn.Module, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None, Callable[[], None]]"]
# (module, like) -> (weight, bias) as stored, when the layer's forward uses exactly these cast to like's dtype and
# device (no patches, scales or quantized layout), so that they may be cast a slice at a time; else None
StoredWeights = Callable[[nn.Module, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None] | None"]
# module -> whether its forward is exactly the textbook linear/conv of its weight (safe for the formulas above)
PlainTest = Callable[[nn.Module], bool]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_INPUT_GRAD = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}


def _release() -> None:
    return None


def plain_fetch(module: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, Callable[[], None]]:
    """The module's own weight and bias in like's dtype/device (no copy when they already match)."""
    weight = module.weight.to(device=like.device, dtype=like.dtype)
    bias = module.bias.to(device=like.device, dtype=like.dtype) if getattr(module, "bias", None) is not None else None
    return weight, bias, _release


def plain_stored(module: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's own layers use their weight and bias as they are."""
    return module.weight, getattr(module, "bias", None)


def torch_plain(module: nn.Module) -> bool:
    """True for torch's own Linear/ConvNd forward (numeric zero padding): the formulas hold exactly."""
    for base in (nn.Linear, *_CONVS):
        if isinstance(module, base):
            return type(module).forward is base.forward and plain_geometry(module)
    return False


def plain_geometry(module: nn.Module) -> bool:
    """Linear, or a conv whose padding the input-gradient formula takes (zeros, numeric)."""
    if is_linear(module):
        return True
    return module.padding_mode == "zeros" and not isinstance(module.padding, str)


def autograd_safe(t: torch.Tensor) -> torch.Tensor:
    """A tensor autograd may save: inference tensors become zero-copy aliases of the same memory."""
    if t is None or not t.is_inference() or type(t) not in (torch.Tensor, nn.Parameter):
        return t
    with torch.inference_mode(False):
        alias = torch.empty(0, dtype=t.dtype, device=t.device).set_(
            t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    if isinstance(t, nn.Parameter):
        alias = nn.Parameter(alias, requires_grad=False)
        alias.__dict__.update(t.__dict__)  # attributes ComfyUI keeps on parameters (_model_dtype, ...)
    return alias


# Large weights are cast and multiplied one slice of output channels at a time, so that a layer costs one
# slice of cast weight rather than the whole (SD1.5's 2560->1280 conv: 118 MB in fp32), and CPU convolution
# (oneDNN), which copies its whole weight into its own layout on every call, copies one slice too. 8 MiB:
# a layer then costs at most ~16 MiB (slice + oneDNN's copy of it); on the CPU, 8 MiB slices of SD1.5's
# large convs run within 5% of the time of 16 MiB ones and of the whole layer.
SLICE_BYTES = 8 * 2**20


def row_slices(weight: torch.Tensor, dtype: torch.dtype) -> list[slice]:
    """Output-channel ranges of at most SLICE_BYTES each once cast to dtype (one range for a small weight)."""
    rows = weight.shape[0]
    step = max(1, SLICE_BYTES // max(1, weight[0].numel() * dtype.itemsize))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(device=like.device, dtype=like.dtype)


def _worth_slicing(weight: torch.Tensor, x: torch.Tensor, conv: bool) -> bool:
    """Slicing saves memory only where a whole copy would be made: a cast, or oneDNN's copy for a CPU conv."""
    copies = weight.dtype != x.dtype or weight.device != x.device or (conv and x.device.type == "cpu")
    return copies and len(row_slices(weight, x.dtype)) > 1


def _sliced_output(x: torch.Tensor, weight: torch.Tensor, bias, dim: int, apply) -> torch.Tensor:
    """y[s] = apply(x, W[s], b[s]) over output-channel slices s (dim: the output's channel axis), each slice
    cast on its own and written into one output."""
    out = None
    for s in row_slices(weight, x.dtype):
        piece = apply(x, _cast(weight[s], x), _cast(None if bias is None else bias[s], x))
        if out is None:
            shape = list(piece.shape)
            shape[dim] = weight.shape[0]
            out = piece.new_empty(shape)
        out.narrow(dim, s.start, s.stop - s.start).copy_(piece)
    return out


def _linear_input_grad(grad: torch.Tensor, weight: torch.Tensor, sliced: bool) -> torch.Tensor:
    """dx = g W, accumulated in place over output-channel slices of W when sliced."""
    if not sliced:
        return grad @ _cast(weight, grad)
    g = grad.reshape(-1, grad.shape[-1])
    dx = g.new_zeros(g.shape[0], weight.shape[1])
    for s in row_slices(weight, grad.dtype):
        dx.addmm_(g[:, s], _cast(weight[s], grad))
    return dx.view(*grad.shape[:-1], weight.shape[1])


def _conv_input_grad(ctx, grad: torch.Tensor, weight: torch.Tensor, sliced: bool) -> torch.Tensor:
    """dx = conv_transpose(g, W), summed over output-channel slices of W when sliced."""
    m, input_grad = ctx.module, _CONV_INPUT_GRAD[grad.dim() - 2]
    if not sliced:
        return input_grad(ctx.x_shape, _cast(weight, grad), grad, m.stride, m.padding, m.dilation, m.groups)
    dx = None
    for s in row_slices(weight, grad.dtype):
        piece = input_grad(ctx.x_shape, _cast(weight[s], grad), grad[:, s], m.stride, m.padding, m.dilation, 1)
        dx = piece if dx is None else dx.add_(piece)
    return dx


class _FrozenLayer(torch.autograd.Function):
    """y = layer(x) with nothing saved; backward fetches the weight again: from the stored tensors a slice at a
    time when the layer's cast is a plain conversion (stored) and a whole copy would be made, else whole
    through the backend's fetch."""

    @staticmethod
    def forward(ctx, x, run, module, fetch, stored):
        ctx.module, ctx.fetch, ctx.x_dtype, ctx.x_shape = module, fetch, x.dtype, x.shape
        ctx.linear = is_linear(module)
        ctx.stored = _to_slice(module, x, stored)
        if ctx.stored is None:
            return run(x)  # the layer's own forward, exactly
        return _sliced_layer(module, x, ctx.stored)

    @staticmethod
    def backward(ctx, grad):
        input_grad = _linear_input_grad if ctx.linear else functools.partial(_conv_input_grad, ctx)
        if ctx.stored is not None:
            dx = input_grad(grad, ctx.stored[0], sliced=True)
        else:
            weight, _, release = ctx.fetch(ctx.module, grad)
            try:  # a CPU conv copies its whole weight (oneDNN): slices of the fetched weight avoid that too
                sliced = not ctx.linear and ctx.module.groups == 1 and _worth_slicing(weight, grad, conv=True)
                dx = input_grad(grad, weight, sliced=sliced)
            finally:
                release()
        return dx.to(ctx.x_dtype), None, None, None, None


def _to_slice(module: nn.Module, x: torch.Tensor, stored) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The stored weight and bias when the layer is to be computed a slice at a time for x, else None."""
    return stored if stored is not None and _worth_slicing(stored[0], x, not is_linear(module)) else None


def _sliced_layer(module: nn.Module, x: torch.Tensor, stored: tuple) -> torch.Tensor:
    """module(x) from its stored weight and bias, one slice of output channels at a time."""
    if is_linear(module):
        return _sliced_output(x, *stored, -1, F.linear)
    return _sliced_output(x, *stored, 1, _conv_of(module))


def _conv_of(module: nn.Module):
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(module.kernel_size)]

    def apply(x, w, b):
        return conv(x, w, b, module.stride, module.padding, module.dilation, 1)

    return apply


@dataclass
class FrozenStats:
    """What was wrapped: formula layers (no weight saved) and modules whose own tensors are aliased."""

    formula_layers: int = 0
    aliased_modules: int = 0


def _formula_forward(module: nn.Module, original, fetch: WeightFetch, stored: StoredWeights):
    if getattr(module, "groups", 1) != 1:
        stored = _no_stored  # grouped convolutions are not sliced
    dims = None if is_linear(module) else len(module.kernel_size) + 2

    def forward(*args, **kwargs):
        if torch.compiler.is_compiling():  # inside a compiled unit the compiler differentiates the layer itself
            return original(*args, **kwargs)
        if kwargs or len(args) != 1 or (dims is not None and args[0].dim() != dims):
            return _aliased_call(module, original, args, kwargs)  # a call the formula does not cover
        x = args[0]
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenLayer.apply(x, original, module, fetch, stored(module, x))
        # Nothing to back-propagate through this call (a checkpointed unit's first pass runs under no_grad;
        # an input that needs no grad), but the cast is still made a slice at a time where that saves memory.
        weights = _to_slice(module, x, stored(module, x))
        if weights is not None:
            with torch.no_grad():
                return _sliced_layer(module, x, weights)
        return _aliased_call(module, original, args, kwargs)

    return forward


def _no_stored(module: nn.Module, like: torch.Tensor) -> None:
    return None


def own_tensors(module: nn.Module) -> list[tuple[dict, str]]:
    """The (table, name) slots of the module's own inference parameters and buffers."""
    return [(module._parameters, n) for n, p in module._parameters.items() if p is not None and p.is_inference()] + \
        [(module._buffers, n) for n, b in module._buffers.items() if b is not None and b.is_inference()]


def _aliased_call(module: nn.Module, original, args: tuple, kwargs: dict):
    """Run module's forward with its own inference tensors swapped for aliases, only for this call (a compiled
    unit swaps them for the whole unit's call: compiled_units.py)."""
    if torch.compiler.is_compiling():
        return original(*args, **kwargs)
    with aliased(own_tensors(module) if torch.is_grad_enabled() else []):
        return original(*args, **kwargs)


@contextlib.contextmanager
def aliased(slots: list[tuple[dict, str]]) -> Iterator[None]:
    """The inference tensors in these (module._parameters / _buffers, name) slots swapped for autograd-safe
    aliases, restored on exit."""
    saved = [(table, name, table[name]) for table, name in slots if table[name] is not None and table[name].is_inference()]
    try:
        for table, name, tensor in saved:
            table[name] = autograd_safe(tensor)
        yield
    finally:
        for table, name, tensor in saved:
            table[name] = tensor


def _aliasing_forward(module: nn.Module, original):
    def forward(*args, **kwargs):
        return _aliased_call(module, original, args, kwargs)

    return forward


def _overridden(module: nn.Module) -> bool:
    """An instance forward other than the class's own (ComfyUI's bypass LoRA: not the formula). One that is just
    the class's forward bound to the module, as ComfyUI leaves behind after ejecting a bypass LoRA, is not."""
    own = module.__dict__.get("forward")
    return own is not None and getattr(own, "__func__", None) is not type(module).forward


@contextlib.contextmanager
def frozen_base(root: nn.Module, fetch: WeightFetch = plain_fetch, is_plain: PlainTest = torch_plain,
                stored: StoredWeights = plain_stored) -> Iterator[FrozenStats]:
    """Wrap every module of root that owns tensors, for the duration.

    Linear/Conv layers for which is_plain holds back-propagate by formula; other modules owning tensors
    directly get per-call aliases; stored says which layers' weights may be cast a slice at a time. Original
    forwards are restored in finally.
    """
    stats = FrozenStats()
    saved: list[tuple[nn.Module, object]] = []
    try:
        for module in root.modules():
            original = module.forward
            overridden = _overridden(module)
            if (is_linear(module) or isinstance(module, _CONVS)) and is_plain(module) and not overridden:
                wrapped = _formula_forward(module, original, fetch, stored)
                stats.formula_layers += 1
            elif any(t is not None for t in (*module._parameters.values(), *module._buffers.values())):
                wrapped = _aliasing_forward(module, original)
                stats.aliased_modules += 1
            else:
                continue
            replace_forward(module, wrapped, saved)
        yield stats
    finally:
        restore_forwards(saved)


def explain_inference_error(error: RuntimeError) -> TrainingError | None:
    """A clear message for autograd's refusal to save an inference tensor that no wrapper covered."""
    if "Inference tensors cannot be saved for backward" not in str(error):
        return None
    return TrainingError(
        "a layer of this model uses a weight that it does not own in its forward (an inference tensor "
        "from ComfyUI's loader), so it cannot be back-propagated through; please report the model type")


@contextlib.contextmanager
def frozen_parameters(root: torch.nn.Module):
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
