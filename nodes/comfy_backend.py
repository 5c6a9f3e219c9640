"""The training loop's Backend for a ComfyUI ModelPatcher: it trains the function the sampler runs.

Everything architecture-specific (input scaling, timestep mapping, extra conditioning such as SDXL's size
vector or Flux's guidance) is left to ComfyUI's own ``BaseModel.apply_model``, which returns the denoised
x0 estimate D; the loop turns D into the model's native loss with ``c_out`` (lora_core/training/objective.py). As the sampler
does, the model sampling comes from the patcher (so ModelSamplingFlux/SD3/Discrete nodes upstream apply),
and the patcher's model_options (transformer_options patches, wrappers, model_function_wrapper) are honoured.
"""

from __future__ import annotations

from typing import Any

import torch

import comfy.model_patcher
import comfy.model_sampling
import comfy.ops
import comfy.sampler_helpers
import comfy.samplers

from ..lora_core.training.frozen_layers import plain_fetch, plain_geometry, torch_plain

# Keep u away from the ends: sigma(0) = 0 would make c_out zero, and sigma(1) is infinite for
# some discrete schedules (ComfyUI's percent_to_sigma(0) returns 1e9).
_U_EPS = 1e-4

# ComfyUI's sampling kinds, most specific first (EDM subclasses V_PREDICTION, which subclasses EPS).
_PREDICTIONS = (
    ("EDM", "edm"), ("V_PREDICTION_DDPM", "v"), ("V_PREDICTION", "v"), ("IMG_TO_IMG_FLOW", "flow"),
    ("CONST", "flow"), ("COSMOS_RFLOW", "flow"), ("X0", "x0"), ("EPS", "eps"),
)


def prediction_kind(sampling) -> str:
    """eps, v, flow, edm or x0, by isinstance on ComfyUI's sampling classes (the class name is always ModelSampling)."""
    for name, kind in _PREDICTIONS:
        cls = getattr(comfy.model_sampling, name, None)
        if cls is not None and isinstance(sampling, cls):
            return kind
    return "unknown"


class SampleCond:
    """One caption's conditioning, turned into the model's inputs (c_crossattn, y, guidance, ...)."""

    def __init__(self, model_conds: dict[str, Any]):
        self.model_conds = model_conds
        # latent frames (C, k, h, w) the sampler keeps at the clip's start (nodes/first_frame_conds.py "latent")
        self.known_frames: torch.Tensor | None = None

    def inputs(self) -> dict[str, Any]:
        return {k: c.process_cond(batch_size=1, area=None) for k, c in self.model_conds.items()}

    def can_concat(self, other: "SampleCond") -> bool:
        """The sampler's rule for batching two conds (CLIP lengths repeat to a common multiple, T5 ones do not)."""
        if self.model_conds.keys() != other.model_conds.keys():
            return False
        return all(c.can_concat(other.model_conds[k]) for k, c in self.model_conds.items())


def encode_sample_cond(patcher, conditioning: list, latent: torch.Tensor, seed: int, **sampler_args) -> SampleCond:
    """Run the model's ``extra_conds`` for one latent, exactly as the sampler would for one cond.

    conditioning: ComfyUI CONDITIONING ([[cross_attn, {"pooled_output": ...}], ...]); only its first entry
    is used (a caption encodes to one). latent: (C, H, W) or (C, T, H, W), already process_latent_in-ed.
    sampler_args: what else the sampler passes (denoise_mask).
    """
    device = patcher.load_device
    converted = comfy.sampler_helpers.convert_cond(conditioning[:1])
    batch = latent.unsqueeze(0)
    encoded = comfy.samplers.encode_model_conds(
        patcher.model.extra_conds, converted, batch, device, "positive", latent_image=batch, seed=seed, **sampler_args
    )
    return SampleCond(encoded[0]["model_conds"])


def with_known_frames(x: torch.Tensor, conds: list[SampleCond]) -> torch.Tensor:
    """Rows whose cond keeps known frames get them in place of their first frames: the sampler's inpainting rule
    (x m + latent (1 - m), for models whose scale_latent_inpaint returns the latent clean), used on the model's
    input and on its output."""
    if all(c.known_frames is None for c in conds):
        return x
    dtype = torch.promote_types(x.dtype, torch.float32)  # the known frames exactly, also under autocast
    rows = []
    for row, cond in zip(x.to(dtype), conds):
        known = cond.known_frames
        rows.append(row if known is None else torch.cat([known.to(row), row[:, known.shape[1]:]], dim=1))
    return torch.stack(rows)


def concat_groups(conds: list[SampleCond], key=None) -> list[list[int]]:
    """Indices grouped so that each group can be one model call (the sampler's can_concat rule), and, where
    the model needs it, agree on ``key(cond)``."""
    groups: list[list[int]] = []
    for i, cond in enumerate(conds):
        for group in groups:
            first = conds[group[0]]
            if first.can_concat(cond) and (key is None or key(first) == key(cond)):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def split_by_sigma(groups: list[list[int]], sigma: torch.Tensor) -> list[list[int]]:
    """Each group split into runs of rows with one sigma (first-seen order kept)."""
    split = []
    for group in groups:
        by_value: dict[float, list[int]] = {}
        for i in group:
            by_value.setdefault(float(sigma[i]), []).append(i)
        split += by_value.values()
    return split


def masks_rows_with_second_caption(root: torch.nn.Module) -> bool:
    """city96/ComfyUI_ExtraModels' SanaMS masks every row's caption with the second row's length
    (``y_lens = [y_lens[1]] * bs``) and fails on a one-row call. Sampling with CFG always gives it two rows."""
    return type(root).__name__ == "SanaMS" and "y_lens[1]" in _source(type(root))


def _source(code) -> str:
    import inspect

    try:
        return inspect.getsource(code)
    except (OSError, TypeError):
        return ""


def caption_length(cond: SampleCond) -> int:
    """Tokens up to the last non-zero one in the caption (SanaTextEncode zeroes the padding)."""
    caption = cond.model_conds["c_crossattn"].cond
    return int(((caption != 0).sum(-1) > 0).sum())


def _patched(module: torch.nn.Module) -> bool:
    """ComfyUI applies weight/bias functions (LoRA or lowvram patches) to this layer's weight in forward."""
    return bool(getattr(module, "weight_function", None) or getattr(module, "bias_function", None))


def _casts_in_forward(module: torch.nn.Module, like: torch.Tensor) -> bool:
    return bool(getattr(module, "comfy_cast_weights", False) or _patched(module) or module.weight.device != like.device)


def comfy_fetch(module: torch.nn.Module, like: torch.Tensor):
    """A layer's effective weight, exactly as its own forward gets it: ComfyUI's cast (lowvram/partial loading,
    manual_cast, fp8 dequantisation, LoRA patches applied per forward) when the layer casts, else the weight."""
    if not _casts_in_forward(module, like):
        return plain_fetch(module, like)
    weight, bias, stream = comfy.ops.cast_bias_weight(module, like, offloadable=True)
    return weight, bias, lambda: comfy.ops.uncast_bias_weight(module, weight, bias, stream)


def _run_every_op() -> None:
    check = getattr(comfy.ops, "run_every_op", None)  # both supported snapshots have it; older ComfyUI may not
    if check is not None:
        check()


def comfy_stored(module: torch.nn.Module, like: torch.Tensor):
    """The stored weight and bias when ComfyUI's cast of them is a plain dtype conversion on like's device (no
    LoRA patch functions, no scales, no quantized layout, no dynamic-VRAM lazy weights), so large layers may
    be cast a slice at a time; else None (the whole cast goes through comfy_fetch).

    Called on every call of the layer, before either path: the sliced path bypasses the layer's own forward, so
    ComfyUI's per-op check (cancel from the queue) runs here."""
    _run_every_op()
    weight, bias = module.weight, getattr(module, "bias", None)
    if hasattr(module, "_v") or _patched(module) or any(hasattr(module, a) for a in ("scale_weight", "scale_input", "weight_scale")):
        return None
    if any(t is not None and (type(t) not in (torch.Tensor, torch.nn.Parameter) or t.device != like.device)
           for t in (weight, bias)):
        return None
    return weight, bias


def comfy_plain(module: torch.nn.Module) -> bool:
    """comfy.ops Linear/Conv (any cast mode, quantized weights included) or torch's own: forward is the linear/conv
    of its weight, so backward is dx = g W with W as the cast gives it (dequantized). For a quantized layer the
    forward also rounds its input to the weight's format; passing the gradient straight through that rounding
    is what ComfyUI's own training path (QuantLinearFunc) does. Layers that scale their input first
    (pre_quant_scale, AWQ) keep autograd's own path."""
    if torch_plain(module):
        return True
    forward = type(module).forward
    return (getattr(forward, "__module__", "") == "comfy.ops" and plain_geometry(module)
            and getattr(module, "pre_quant_scale", None) is None)


class ComfyBackend:
    """lora_core Backend over ComfyUI's BaseModel: D(x_t) = apply_model(x_t, sigma, **conds)."""

    fetch_weight = staticmethod(comfy_fetch)
    is_plain = staticmethod(comfy_plain)
    stored_weights = staticmethod(comfy_stored)

    def __init__(self, patcher):
        self.patcher = patcher
        self.model = patcher.model
        self.root = self.model.diffusion_model
        self.sampling = patcher.get_model_object("model_sampling")
        self.device = patcher.load_device
        self.prediction = prediction_kind(self.sampling)
        # from the patcher: a ModelComputeDtype node upstream sets it as an object patch
        self.compute_dtype = patcher.get_model_object("manual_cast_dtype") or self.model.get_dtype()
        self.pair_rows = masks_rows_with_second_caption(self.root)
        # Mean-flow models (HunyuanVideo 1.5 step-distilled) embed a second time r, one per call: rows of a
        # call must then share their sigma.
        self.mean_flow = getattr(self.root, "time_r_in", None) is not None
        # what the sampler adds before calling the model: the patcher's wrappers and callbacks
        self.model_options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
        self.model_options.setdefault("transformer_options", {})
        comfy.sampler_helpers.prepare_model_patcher(patcher, {}, self.model_options)

    def sigma_from_u(self, u: torch.Tensor) -> torch.Tensor:
        # percent_to_sigma(p) maps sampling progress p (0 = start = most noise) to sigma with the model's
        # own schedule and shift, so u (0 = clean) is 1 - p.
        u = u.clamp(_U_EPS, 1.0 - _U_EPS)
        sigmas = [float(self.sampling.percent_to_sigma(1.0 - float(x))) for x in u]
        return torch.tensor(sigmas, dtype=torch.float32, device=self.device)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.sampling.noise_scaling(sigma, noise, x0)

    def timestep_fraction(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's timestep as a fraction of its schedule: sigma for flow models (their timestep is
        sigma x multiplier, shift included: Wan 2.2's expert boundary), else discrete timestep / count."""
        if self.prediction == "flow":
            return sigma.float()
        count = len(getattr(self.sampling, "sigmas", ())) or 1000
        return self.sampling.timestep(sigma.float()).float() / count

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(sigma.shape[0], 1, device=sigma.device, dtype=torch.float32)
        return self.sampling.calculate_denoised(sigma, ones, torch.zeros_like(ones)).flatten()

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, conds: list[SampleCond]) -> torch.Tensor:
        # Each sample keeps its own caption: conds are concatenated along the batch in x_t's order, never
        # crossed with every latent as the sampler's cond batching would; conds that cannot share a call
        # (T5 captions of different lengths) are split into calls the way the sampler splits them.
        x_t = with_known_frames(x_t, conds)
        out: list[torch.Tensor | None] = [None] * len(conds)
        groups = concat_groups(conds, caption_length if self.pair_rows else None)
        for group in split_by_sigma(groups, sigma) if self.mean_flow else groups:
            index = torch.tensor(group, device=x_t.device)
            denoised = self._apply(x_t.index_select(0, index), sigma.index_select(0, index), [conds[i] for i in group])
            for row, i in enumerate(group):
                out[i] = denoised[row]
        return with_known_frames(torch.stack(out), conds)

    def _apply(self, x: torch.Tensor, sigma: torch.Tensor, conds: list[SampleCond]) -> torch.Tensor:
        if self.pair_rows and len(conds) == 1:  # a twin row, whose output is dropped: the model needs two
            return self._apply(x.repeat(2, *[1] * (x.dim() - 1)), sigma.repeat(2), conds * 2)[:1]
        c = comfy.samplers.cond_cat([cond.inputs() for cond in conds])
        options = dict(self.model_options["transformer_options"])
        # The sampler also passes its schedule. Training has one sigma: [sigma, sigma] makes the "next" sigma the
        # current one, so a mean-flow model averages over an empty interval (r = t), which is the instantaneous
        # velocity the flow loss trains; hooks that read the schedule see this sigma as its start.
        options.update(cond_or_uncond=[0] * len(conds), uuids=[], sigmas=sigma, sample_sigmas=sigma[:1].repeat(2))
        c["transformer_options"] = options
        wrapper = self.model_options.get("model_function_wrapper")
        if wrapper is not None:
            return wrapper(self.model.apply_model, {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": [0] * len(conds)})
        return self.model.apply_model(x, sigma, **c)
