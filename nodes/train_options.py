"""Optional config nodes for Train LoRA's advanced groups, and how their settings reach TrainConfig.

Train LoRA keeps what most users touch; each group here is a small node whose output plugs into one of
Train LoRA's optional inputs. Unconnected, every setting has the community default (the same as these
nodes' defaults), so a workflow without them trains exactly as before.
"""

from __future__ import annotations

import ast
from typing import Any

from comfy_api.latest import io

from ..lora_core.errors import TrainingError
from ..lora_core.training.loss_options import HUBER_SCHEDULES, LOSS_TYPES, LossOptions
from ..lora_core.adapters.targets import PRESETS
from .types import ALGORITHM_OPTIONS, LOSS_OPTIONS, OPTIMIZER_OPTIONS, PREVIEW_OPTIONS, TEXT_ENCODER_OPTIONS

CATEGORY = "LoRA Lab/options"


def parse_settings(text: str) -> dict[str, Any]:
    """'d_coef=2, betas=(0.9, 0.99)' -> {"d_coef": 2, "betas": (0.9, 0.99)} (Python literals only)."""
    out: dict[str, Any] = {}
    text = text.strip()
    if not text:
        return out
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        for keyword in call.keywords:
            if keyword.arg is None:
                raise ValueError("**")
            out[keyword.arg] = ast.literal_eval(keyword.value)
        if call.args:
            raise ValueError("positional")
    except (SyntaxError, ValueError) as error:
        raise TrainingError(f"optimizer settings {text!r} are not 'name=value, ...' with plain values ({error})") from None
    return out


class OptimizerOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabOptimizerOptions", display_name="LoRA Lab Optimizer", category=CATEGORY,
            description="Advanced optimizer settings for Train LoRA (which optimizer stays on Train LoRA).",
            inputs=[
                io.Float.Input("weight_decay", default=-1.0, min=-1.0, max=10.0, step=0.001,
                               tooltip="-1: the optimizer's own default (AdamW 0.01, CAME/Adafactor 0, Prodigy 0.01)."),
                io.Float.Input("max_grad_norm", default=1.0, min=0.0, max=1000.0, step=0.1,
                               tooltip="Gradient clipping by global norm; 0 turns it off."),
                io.Int.Input("lr_cycles", default=1, min=1, max=100, tooltip="Cycles of cosine_with_restarts."),
                io.Float.Input("ema_decay", default=0.0, min=0.0, max=0.99999, step=0.0001,
                               tooltip="0 = off. Else keep an exponential moving average of the LoRA weights "
                                       "(e.g. 0.999) and output it as the result."),
                io.String.Input("settings", default="", multiline=False,
                                tooltip="More settings of the chosen optimizer as name=value, e.g. "
                                        "'d_coef=2' (Prodigy), 'relative_step=True' (Adafactor), "
                                        "'betas=(0.9, 0.99)'. Unknown names are an error listing the valid ones."),
            ],
            outputs=[OPTIMIZER_OPTIONS.Output(display_name="optimizer_options")],
        )

    @classmethod
    def execute(cls, weight_decay, max_grad_norm, lr_cycles, ema_decay, settings) -> io.NodeOutput:
        return io.NodeOutput({"weight_decay": None if weight_decay < 0 else weight_decay,
                              "max_grad_norm": max_grad_norm or None, "lr_cycles": lr_cycles, "ema_decay": ema_decay,
                              "optimizer_settings": parse_settings(settings)})


class LossAndNoiseOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabLossOptions", display_name="LoRA Lab Loss & Noise", category=CATEGORY,
            description="Loss function, loss weighting, noise offset and timestep sampling for Train LoRA.",
            inputs=[
                io.Combo.Input("loss_type", options=list(LOSS_TYPES), default="l2",
                               tooltip="l2: the model's native MSE. huber / smooth_l1: robust to outliers (kohya's)."),
                io.Combo.Input("huber_schedule", options=list(HUBER_SCHEDULES), default="snr",
                               tooltip="How the Huber threshold varies with the noise level (kohya's schedules)."),
                io.Float.Input("huber_c", default=0.1, min=0.001, max=1.0, step=0.001, tooltip="Huber threshold c."),
                io.Float.Input("huber_scale", default=1.0, min=0.01, max=10.0, step=0.01,
                               tooltip="Scale of the constant and exponential schedules."),
                io.Float.Input("min_snr_gamma", default=0.0, min=0.0, max=20.0, step=0.5,
                               tooltip="0 = off; 5 is the min-SNR paper's value (eps and v models)."),
                io.Boolean.Input("debiased_estimation", default=False,
                                 tooltip="Weight each noise level by 1/sqrt(SNR) of the noise loss (kohya's option)."),
                io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="0 = off; 0.05-0.1 lets SD1.5/SDXL learn very dark and bright images."),
                io.Float.Input("adaptive_noise_scale", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="kohya: add this times each latent channel's |mean| to the noise offset."),
                io.Combo.Input("timestep_sampling", options=["auto", "uniform", "logit_normal", "sigmoid", "shift", "mode"],
                               default="auto", tooltip="Overrides Train LoRA's choice. sigmoid/shift use "
                                                       "sigmoid_scale; shift adds a shift on top of the model's own."),
                io.Float.Input("logit_mean", default=0.0, min=-5.0, max=5.0, step=0.1, tooltip="Logit-normal mean."),
                io.Float.Input("logit_std", default=1.0, min=0.01, max=5.0, step=0.1, tooltip="Logit-normal std."),
                io.Float.Input("sigmoid_scale", default=1.0, min=0.01, max=10.0, step=0.1),
                io.Float.Input("shift", default=3.0, min=0.1, max=20.0, step=0.1, tooltip="For timestep_sampling 'shift'."),
                io.Float.Input("mode_scale", default=1.29, min=0.0, max=5.0, step=0.01, tooltip="SD3's mode sampling."),
                io.Float.Input("timestep_min", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Train only on timesteps >= this fraction of the model's schedule "
                                       "(Wan 2.2 high-noise expert: 0.875 T2V, 0.9 I2V)."),
                io.Float.Input("timestep_max", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="... and <= this fraction (Wan 2.2 low-noise expert: 0.875 / 0.9)."),
            ],
            outputs=[LOSS_OPTIONS.Output(display_name="loss_options")],
        )

    @classmethod
    def execute(cls, loss_type, huber_schedule, huber_c, huber_scale, min_snr_gamma, debiased_estimation, noise_offset,
                adaptive_noise_scale, timestep_sampling, logit_mean, logit_std, sigmoid_scale, shift, mode_scale,
                timestep_min, timestep_max) -> io.NodeOutput:
        loss = LossOptions(loss_type, huber_c, huber_scale, huber_schedule, min_snr_gamma, debiased_estimation,
                           noise_offset, adaptive_noise_scale)
        loss.check()
        options = {"loss": loss, "logit_mean": logit_mean, "logit_std": logit_std, "sigmoid_scale": sigmoid_scale,
                   "sampling_shift": shift, "mode_scale": mode_scale, "timestep_min": timestep_min,
                   "timestep_max": timestep_max}
        if timestep_sampling != "auto":
            options["timestep_sampling"] = timestep_sampling
        return io.NodeOutput(options)


class AlgorithmOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabAlgorithmOptions", display_name="LoRA Lab Algorithm", category=CATEGORY,
            description="Settings of the LoRA algorithm chosen on Train LoRA (LoKr factor, DoRA axis, OFT block "
                        "size and constraint, dropout).",
            inputs=[
                io.Int.Input("lokr_factor", default=-1, min=-1, max=4096,
                             tooltip="LoKr: split each dimension as factor x rest; -1 = as square as possible. "
                                     "Must not exceed a layer's dimensions."),
                io.Boolean.Input("lokr_decompose_both", default=False,
                                 tooltip="LoKr: also make the small Kronecker factor low-rank."),
                io.Combo.Input("dora_axis", options=["input", "output"], default="input",
                               tooltip="input: LyCORIS/A1111 layout, applied exactly by ComfyUI's loader. output: "
                                       "PEFT/paper layout (converts to diffusers); ComfyUI's loader applies it "
                                       "approximately (it divides by the base weight's norm)."),
                io.Float.Input("dropout", default=0.0, min=0.0, max=0.9, step=0.01,
                               tooltip="Dropout on the LoRA path's input (not OFT: it rotates the output)."),
                io.Int.Input("oft_block_size", default=0, min=0, max=4096, optional=True,
                             tooltip="OFT: output channels rotate in blocks of up to this size (the largest divisor "
                                     "of the layer's width, at most its square root, as LyCORIS). 0 = the rank."),
                io.Float.Input("oft_constraint", default=0.0, min=0.0, max=1000.0, step=0.01, optional=True,
                               tooltip="OFT: cap on the norm of the skew-symmetric Q over a layer's blocks (how far "
                                       "it may rotate); saved as alpha, as ComfyUI's loader reads it. 0 = none."),
            ],
            outputs=[ALGORITHM_OPTIONS.Output(display_name="algorithm_options")],
        )

    @classmethod
    def execute(cls, lokr_factor, lokr_decompose_both, dora_axis, dropout, oft_block_size=0,
                oft_constraint=0.0) -> io.NodeOutput:
        return io.NodeOutput({"lokr": {"factor": lokr_factor, "decompose_both": lokr_decompose_both},
                              "dora": {"axis": dora_axis}, "oft": {"block_size": oft_block_size,
                                                                   "constraint": float(oft_constraint)},
                              "dropout": dropout})


class TextEncoderOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabTextEncoderOptions", display_name="LoRA Lab Text Encoder", category=CATEGORY,
            description="Train a LoRA on the text encoder(s) too (CLIP-L, CLIP-G; T5 optional). Captions are "
                        "then encoded every step with gradients (no caption cache for them); the output MODEL "
                        "and CLIP carry the LoRA, and the file gets lora_te*_ keys (applied via strength_clip).",
            inputs=[
                io.Float.Input("text_encoder_lr", default=5e-5, min=1e-8, max=1.0, step=1e-6,
                               tooltip="Learning rate of the text-encoder LoRA (kohya: about half the UNet's)."),
                io.Boolean.Input("train_t5", default=False,
                                 tooltip="Also train T5 (SD3/Flux); large, so off by default."),
                io.Combo.Input("targets", options=["text_encoder"] + [p for p in PRESETS if p != "text_encoder"],
                               default="text_encoder", tooltip="Which text-encoder layers get a LoRA."),
            ],
            outputs=[TEXT_ENCODER_OPTIONS.Output(display_name="text_encoder_options")],
        )

    @classmethod
    def execute(cls, text_encoder_lr, train_t5, targets) -> io.NodeOutput:
        return io.NodeOutput({"train_text_encoder": True, "text_encoder_lr": text_encoder_lr, "train_t5": train_t5,
                              "text_encoder_targets": targets})


class PreviewOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabPreviewOptions", display_name="LoRA Lab Previews", category=CATEGORY,
            description="Sample fixed prompts every N steps with ComfyUI's own sampler on the model being "
                        "trained; shown in the node and the progress bar, saved to output/ with the step in the "
                        "name. Previews never change the training's randomness.",
            inputs=[
                io.Int.Input("every_n_steps", default=100, min=1, max=100_000, tooltip="Sample every N steps."),
                io.String.Input("prompts", default="a photo of the subject", multiline=True,
                                tooltip="One prompt per line."),
                io.String.Input("negative", default="", tooltip="Negative prompt for all previews."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="Fixed sampling seed."),
                io.Int.Input("steps", default=20, min=1, max=200),
                io.Float.Input("cfg", default=7.0, min=0.0, max=50.0, step=0.1),
                io.Combo.Input("sampler_name", options=_samplers(), default="euler"),
                io.Combo.Input("scheduler", options=_schedulers(), default="normal"),
                io.Int.Input("width", default=512, min=64, max=4096, step=8),
                io.Int.Input("height", default=512, min=64, max=4096, step=8),
            ],
            outputs=[PREVIEW_OPTIONS.Output(display_name="previews")],
        )

    @classmethod
    def execute(cls, every_n_steps, prompts, negative, seed, steps, cfg, sampler_name, scheduler, width, height) -> io.NodeOutput:
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not lines:
            raise TrainingError("LoRA Lab Previews: give at least one prompt (one per line)")
        return io.NodeOutput({"every": every_n_steps, "prompts": lines, "negative": negative, "seed": seed,
                              "steps": steps, "cfg": cfg, "sampler_name": sampler_name, "scheduler": scheduler,
                              "width": width, "height": height})


def _samplers() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def _schedulers() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


OPTION_NODES = [OptimizerOptions, LossAndNoiseOptions, AlgorithmOptions, TextEncoderOptions, PreviewOptions]


def config_fields(optimizer=None, loss=None, algorithm_name="lora", algorithm=None, text_encoder=None) -> dict[str, Any]:
    """TrainConfig keyword arguments from the connected option groups (None = defaults)."""
    fields: dict[str, Any] = {}
    if optimizer:
        fields.update(optimizer)
    if loss:
        fields.update(loss)
    if algorithm:
        fields["dropout"] = algorithm["dropout"]
        fields["algorithm_options"] = dict(algorithm.get(algorithm_name, {}))
    elif algorithm_name == "lokr":
        fields["algorithm_options"] = {"factor": -1}
    if text_encoder:
        fields.update({k: v for k, v in text_encoder.items() if k != "train_t5"})
    return fields
