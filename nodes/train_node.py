"""Train LoRA: MODEL + CLIP + VAE + dataset in, MODEL with the trained LoRA + LORA + loss history out."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import comfy.model_management
import comfy.utils
from comfy_api.latest import io, ui

from ..lora_core.adapters.algorithms import ALGORITHMS
from ..lora_core.training.devices import autocast_available
from ..lora_core.errors import (LoraLabError, NonFiniteLossError, TrainingCrashed, TrainingError,
                                TrainingOutOfMemory)
from ..lora_core.training.checkpoint_modes import MODES as CHECKPOINTING_MODES, checkpointing_mode
from ..lora_core.training.lr_schedule import LR_SCHEDULES
from ..lora_core.training.memory_estimate import training_memory
from ..lora_core.optimizers import OPTIMIZERS, optimizer_spec
from ..lora_core.training.timesteps import METHODS as TIMESTEP_METHODS
from ..lora_core.training.state import state_path
from ..lora_core.training.trainer import TrainConfig, train
from ..lora_core.training.memory_estimate import adapter_parameter_count
from ..lora_core.training.validation import ValidationLoss
from . import text_encoders
from .previews import Previewer
from .run_files import load_resume, resolve_resume, resumable_states, save_step
from .step_hooks import StepHooks
from .train_options import config_fields
from .base_loras import base_loras
from .bypass_adapters import trainable_bypass_adapters
from .comfy_backend import ComfyBackend
from .comfy_paths import lora_output_name
from .expert_training import check_experts, refuse_unsupported, train_two_experts
from .first_frame_conds import MODES as FIRST_FRAME_MODES, resolve_first_frame
from .family import model_family
from .lora_apply import apply_lora
from .lora_state import TrainedLora, trained_lora
from .rope_autograd import ensure_rope_autograd
from .training_mode import comfy_training_mode
from .train_progress import TrainProgress
from .run_data import prepare_run_data
from .training_data import largest_latent_shape
from .types import (ALGORITHM_OPTIONS, DATASET, LORA, LOSS, LOSS_OPTIONS, OPTIMIZER_OPTIONS, PRESERVATION_OPTIONS,
                    PREVIEW_OPTIONS, TEXT_ENCODER_OPTIONS)

log = logging.getLogger("lora_lab")

TARGET_PRESETS = ["attention", "attention_mlp", "all_linear"]
SCHEDULES = list(LR_SCHEDULES)
TIMESTEP_SAMPLING = ["auto", *TIMESTEP_METHODS]
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 autocast on accelerators (CUDA, XPU, MPS) where ComfyUI would compute in bf16 and torch can
    autocast; on the CPU no autocast (the model's own dtype computes)."""
    if precision != "auto":
        return precision
    if (device.type != "cpu" and autocast_available(device.type)
            and comfy.model_management.should_use_bf16(device)):
        return "bf16"
    return "fp32"


def resolve_timestep_sampling(sampling: str, prediction: str) -> str:
    """auto: logit-normal for flow models (SD3, Flux, Wan: as their authors train), else uniform."""
    if sampling != "auto":
        return sampling
    return "logit_normal" if prediction == "flow" else "uniform"


def _save_partial(lora: TrainedLora, name: str, result, reason: str) -> Path:
    """The LoRA after the last completed step and, beside it, the state to continue from (as save_every does)."""
    path = save_step(lora, result.state, name, result.steps_done)
    log.warning("LoRA Lab: %s; partial LoRA (%d steps) saved to %s", reason, result.steps_done, path)
    return path


def load_for_training(patcher, backend: ComfyBackend, config: TrainConfig, latent_shape: tuple[int, ...]) -> int:
    """Load the model through ComfyUI's memory manager, asking for the room one training step needs.

    No forced full load: the LoRA is a bypass side path and frozen layers fetch their weights again in
    backward, so lowvram/partial loading keeps working while training. Returns the bytes asked for.
    """
    shape = (config.batch_size,) + tuple(latent_shape)
    needed = training_memory(patcher.memory_required(shape), config.gradient_checkpointing,
                             adapter_parameter_count(backend, config), optimizer_spec(config.optimizer).state_slots,
                             config.checkpoint_budget)
    comfy.model_management.load_models_gpu([patcher], memory_required=needed)
    return needed


class TrainLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabTrain",
            display_name="Train LoRA",
            category="LoRA Lab",
            description="Train a LoRA on the connected model with its native objective; outputs the model with "
                        "the LoRA applied, the LoRA, and the loss history.",
            inputs=[
                io.Model.Input("model", tooltip="The model to train on (from any checkpoint/UNet loader)."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Text encoder for the captions (trained only with 'LoRA Lab Text Encoder'). Not needed "
                                      "when conditioning is connected; needed for per-step caption dropout / shuffling, "
                                      "text-encoder training and previews."),
                io.Vae.Input("vae", tooltip="VAE used to encode the training images to latents once (cached)."),
                DATASET.Input("dataset", tooltip="From 'Load Training Images', 'Load Training Videos' or 'Combine Datasets'."),
                io.Int.Input("steps", default=500, min=1, max=1_000_000, tooltip="Optimizer steps."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-6,
                               tooltip="Peak learning rate of the chosen optimizer (Prodigy: 1.0, it finds its own step size)."),
                io.Int.Input("rank", default=16, min=1, max=512, tooltip="LoRA rank (dimension)."),
                io.Float.Input("alpha", default=16.0, min=0.01, max=1024.0, step=0.5,
                               tooltip="LoRA alpha; the update is scaled by alpha/rank."),
                io.Combo.Input("target_preset", options=TARGET_PRESETS, default="attention",
                               tooltip="Which layers get a LoRA: attention q/k/v/out, plus MLP, or every linear layer."),
                io.Int.Input("batch_size", default=1, min=1, max=256,
                             tooltip="Images per step; each keeps its own caption."),
                io.Int.Input("grad_accumulation", default=1, min=1, max=1024,
                             tooltip="Micro-batches accumulated per optimizer step."),
                io.Combo.Input("lr_schedule", options=SCHEDULES, default="constant",
                               tooltip="Learning-rate schedule (diffusers get_scheduler)."),
                io.Int.Input("warmup_steps", default=0, min=0, max=100_000, tooltip="Linear warm-up steps."),
                io.Combo.Input("timestep_sampling", options=TIMESTEP_SAMPLING, default="auto",
                               tooltip="auto: logit-normal for flow models, uniform otherwise."),
                io.Combo.Input("precision", options=PRECISIONS, default="auto",
                               tooltip="Autocast dtype; auto = bf16 on GPUs that support it, else fp32. "
                                       "fp16 uses loss scaling."),
                io.Combo.Input("gradient_checkpointing", options=list(CHECKPOINTING_MODES), default="full",
                               tooltip="Recompute activations in backward to save memory. full: every block "
                                       "(least memory, about one more forward per step); partial: only the "
                                       "blocks that hold the most memory for their cost, keeping at most a quarter "
                                       "of what off keeps; off: fastest, most memory. (true/false in older "
                                       "workflows mean full/off.)"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed for LoRA init, batches, noise and timesteps."),
                io.String.Input("output_name", default="lora_lab_lora",
                                tooltip="Name for metadata and for partial saves (cancel, NaN) in models/loras."),
                io.String.Input("custom_targets", default="", optional=True,
                                tooltip="Optional comma-separated regexes on module names; overrides the preset."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="The dataset's captions output encoded by any text-encoder node (one per "
                                              "caption, in order): for models whose encoder is not a CLIP (Sana's "
                                              "Gemma, T5-only). Per-step caption dropout/shuffling need clip instead."),
                io.Int.Input("validation_every", default=50, min=0, max=1_000_000, optional=True,
                             tooltip="Validation loss of the dataset's held-out images every N steps (and at the end), "
                                     "at fixed noise; 0 = off."),
                io.Combo.Input("algorithm", options=list(ALGORITHMS), default="lora", optional=True,
                               tooltip="lora (LoCon on convs), loha, lokr, dora or oft (rotates each layer's output "
                                       "channels; rank = its block size); settings in 'LoRA Lab Algorithm'."),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default="adamw", optional=True,
                               tooltip="adamw8bit needs bitsandbytes; came/lion pytorch-optimizer; prodigy prodigyopt "
                                       "(set learning_rate 1.0); adamw_schedulefree schedulefree (constant schedule)."),
                io.Int.Input("save_every", default=0, min=0, max=1_000_000, optional=True,
                             tooltip="0 = off. Every N steps write models/loras/<output_name>_stepNNNNN.safetensors "
                                     "and its training state beside it (resume_from continues from it)."),
                io.Combo.Input("resume_from", options=["", *resumable_states()], default="", optional=True,
                               tooltip="Continue a run exactly: a training state under models/loras (written with a "
                                       "LoRA by save_every / cancel / NaN / OOM), or that LoRA's name. "
                                       "Dataset and settings must match (steps may grow)."),
                OPTIMIZER_OPTIONS.Input("optimizer_options", optional=True, tooltip="From 'LoRA Lab Optimizer'."),
                LOSS_OPTIONS.Input("loss_options", optional=True, tooltip="From 'LoRA Lab Loss & Noise'."),
                ALGORITHM_OPTIONS.Input("algorithm_options", optional=True, tooltip="From 'LoRA Lab Algorithm'."),
                TEXT_ENCODER_OPTIONS.Input("text_encoder_options", optional=True,
                                           tooltip="From 'LoRA Lab Text Encoder': train the text encoder(s) too."),
                PREVIEW_OPTIONS.Input("previews", optional=True, tooltip="From 'LoRA Lab Previews'."),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="torch.compile the model's blocks for training (ComfyUI's patches and the "
                                         "LoRA inside the compiled code). The first step at each image size "
                                         "compiles; falls back to plain PyTorch with a warning where compiling "
                                         "fails."),
                PRESERVATION_OPTIONS.Input("preservation", optional=True,
                                           tooltip="From 'LoRA Lab Preservation': differential output / blank-prompt "
                                                   "preservation (needs clip)."),
                io.Combo.Input("image_to_video", options=list(FIRST_FRAME_MODES), default="auto", optional=True,
                               tooltip="Condition each clip on its own first frame, as WanImageToVideo / "
                                       "Wan22ImageToVideoLatent do for sampling. auto: on for image-to-video models "
                                       "(Wan 2.1/2.2 I2V); 'first frame' also for Wan 2.2 TI2V-5B; off: never."),
                io.Model.Input("model_low_noise", optional=True,
                               tooltip="Wan 2.2 A14B: the low-noise expert (model is then the high-noise one). Each "
                                       "step trains the expert its sampled sigma belongs to; both get a LoRA "
                                       "(<output_name>_high_noise / _low_noise)."),
                io.Float.Input("boundary", default=0.0, min=0.0, max=0.999, step=0.005, optional=True,
                               tooltip="Two experts: sigma at and above which the high-noise expert denoises. 0 = "
                                       "Wan 2.2's own (0.875 text-to-video, 0.9 image-to-video)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The input model with the trained LoRA applied."),
                LORA.Output(display_name="lora", tooltip="The trained LoRA (save it with 'Save LoRA')."),
                LOSS.Output(display_name="loss", tooltip="Loss per step, for 'Plot Training Loss'."),
                io.Clip.Output(display_name="clip", tooltip="The input CLIP; with the text-encoder LoRA applied "
                                                            "when it was trained."),
                io.Model.Output(display_name="model_low_noise",
                                tooltip="Two experts: the low-noise expert with its LoRA (else nothing)."),
                LORA.Output(display_name="lora_low_noise", tooltip="Two experts: the low-noise expert's LoRA."),
            ],
            hidden=[io.Hidden.unique_id],
            is_input_list=True,  # the conditioning list arrives whole; every other input is a list of one
        )

    @classmethod
    def validate_inputs(cls, resume_from=None, gradient_checkpointing=None):
        """resume_from stays under models/loras (a typed name that is not in the dropdown is checked here);
        gradient_checkpointing is a mode or, from a workflow saved before the modes, true/false (listing it
        here makes ComfyUI leave its own option check to this method)."""
        for value in gradient_checkpointing if isinstance(gradient_checkpointing, list) else [gradient_checkpointing]:
            if value is not None:
                try:
                    checkpointing_mode(value)
                except LoraLabError as error:
                    return str(error)
        for text in resume_from if isinstance(resume_from, list) else [resume_from]:
            if isinstance(text, str):
                try:
                    resolve_resume(text)
                except LoraLabError as error:
                    return str(error)
        return True

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        single = {k: v[0] if isinstance(v, list) and k != "conditioning" else v for k, v in inputs.items()}
        return cls._run(**single)

    @classmethod
    def _run(cls, model, vae, dataset, steps, learning_rate, rank, alpha, target_preset, batch_size,
             grad_accumulation, lr_schedule, warmup_steps, timestep_sampling, precision,
             gradient_checkpointing, seed, output_name, custom_targets="", clip=None, conditioning=None,
             validation_every=50, algorithm="lora", optimizer="adamw", save_every=0, resume_from="",
             optimizer_options=None, loss_options=None, algorithm_options=None, text_encoder_options=None,
             previews=None, compile=False, preservation=None, image_to_video="auto", model_low_noise=None,
             boundary=0.0) -> io.NodeOutput:
        name = lora_output_name(output_name)
        patcher = model.clone()
        family = model_family(patcher)
        underneath = base_loras(patcher)
        train_te = bool(text_encoder_options)
        if (train_te or previews) and clip is None:
            raise TrainingError("LoRA Lab: " + ("text-encoder training" if train_te else "previews")
                                + " needs Train LoRA's clip input")
        if model_low_noise is not None:
            check_experts(patcher, model_low_noise)
            refuse_unsupported(text_encoder_options, previews, preservation)
        resume = load_resume(resume_from) if model_low_noise is None else None
        encoders = text_encoders.trainable(clip, text_encoder_options.get("train_t5", False)) if train_te else {}
        first_frame = resolve_first_frame(image_to_video, patcher.model)

        run = prepare_run_data(patcher, dataset, vae, clip, conditioning, batch_size, seed,
                               train_text_encoder=train_te, preservation=preservation, first_frame=first_frame)
        data = run.data
        # The VAE and text encoder are done: let ComfyUI evict them before the model is loaded to train.
        comfy.model_management.free_memory(1e30, patcher.load_device)

        backend = ComfyBackend(patcher)
        backend.text_encoders = encoders
        fields = config_fields(optimizer_options, loss_options, algorithm, algorithm_options, text_encoder_options)
        fields.setdefault("timestep_sampling", resolve_timestep_sampling(timestep_sampling, backend.prediction))
        config = TrainConfig(
            steps=steps, learning_rate=learning_rate, rank=rank, alpha=alpha,
            targets=[t.strip() for t in custom_targets.split(",") if t.strip()] or target_preset,
            batch_size=batch_size, grad_accum=grad_accumulation, lr_schedule=lr_schedule,
            warmup_steps=warmup_steps, precision=resolve_precision(precision, patcher.load_device),
            gradient_checkpointing=checkpointing_mode(gradient_checkpointing), compile=compile, seed=seed,
            algorithm=algorithm, optimizer=optimizer,
            identity={"family": family, "dataset inputs": run.fingerprint,
                      **({"first frame": first_frame} if first_frame else {})}, **fields,
        )
        if model_low_noise is not None:
            if run.preservation is not None:
                raise TrainingError("LoRA Lab: a regularisation dataset with two experts is not supported yet; "
                                    "combine training datasets only")
            progress = TrainProgress(steps, cls.hidden.unique_id)
            shape = largest_latent_shape(data)
            return train_two_experts(cls, {"high_noise": patcher, "low_noise": model_low_noise.clone()}, clip, run.view,
                                     data, config, family, name, boundary, save_every, resume_from, validation_every,
                                     progress, lambda p, b: load_for_training(p, b, config, shape))
        load_for_training(patcher, backend, config, largest_latent_shape(data))
        validate = (ValidationLoss(backend, data.validation, validation_every, last_step=steps, batch_size=batch_size,
                                   precision=config.precision) if data.validation and validation_every > 0 else None)

        def finished(result) -> TrainedLora:
            lora = trained_lora(result, config, run.view, family, name, backend.prediction, underneath,
                                tuple(text_encoders.present(clip)))
            lora.metadata.update(run.metadata())  # preservation and the datasets of a mix, when there are any
            return lora

        previewer = None
        if previews:
            previewer = Previewer(patcher, clip, vae, previews, name, cls.hidden.unique_id,
                                  reload=lambda: load_for_training(patcher, backend, config, largest_latent_shape(data)))
        on_step = StepHooks(TrainProgress(steps, cls.hidden.unique_id), finished, name, save_every, previewer)
        with torch.inference_mode(False), torch.enable_grad(), comfy_training_mode(), \
                trainable_bypass_adapters(patcher, clip.patcher if encoders else None):
            result = _train(patcher, backend, data, config, on_step, validate, resume, finished, name, run.preservation)
        return _outputs(cls, patcher, clip, finished(result), result, name, validate, previewer)


def _train(patcher, backend: ComfyBackend, data, config: TrainConfig, on_step, validate, resume, finished,
           name: str, preservation=None):
    """train() in ComfyUI's terms: cancel ends the run with the last step saved; NaN, out of memory and crashes
    save it too and say where."""
    ensure_rope_autograd()
    patcher.pre_run()  # as the sampler does: the model knows its patcher, pre-run callbacks fire
    try:
        # Cancel arrives either as the flag (seen between steps) or as ComfyUI's ops raising
        # InterruptProcessingException mid-forward (which also clears the flag): both end the run.
        return train(backend, data.samples, config, on_step=on_step,
                     should_stop=comfy.model_management.processing_interrupted,
                     interrupt_on=(comfy.model_management.InterruptProcessingException,),
                     order=data.order, validate=validate, resume=resume, preservation=preservation)
    except (NonFiniteLossError, TrainingOutOfMemory, TrainingCrashed) as error:
        kind = {NonFiniteLossError: "loss became non-finite", TrainingOutOfMemory: "out of memory"}.get(
            type(error), "training failed")
        if error.result is None:  # struck inside an optimizer update: the message says why
            raise type(error)(f"LoRA Lab: {error}. Nothing was saved.") from error
        if error.result.steps_done == 0:
            raise type(error)(f"LoRA Lab: {error}. No step was completed, so nothing was saved.") from error
        done = error.result.steps_done
        path = _save_partial(finished(error.result), name, error.result, kind)
        del error.result  # the traceback should not keep the run's tensors alive
        comfy.model_management.soft_empty_cache()
        raise type(error)(f"LoRA Lab: {error}. Saved the LoRA after step {done} to {path} and the state "
                          f"to continue from to {state_path(path)}.") from error
    finally:
        patcher.cleanup()


def _outputs(node, patcher, clip, lora: TrainedLora, result, name: str, validate, previewer) -> io.NodeOutput:
    """The model (and CLIP) with the trained LoRA applied, the LoRA, the loss history; a cancelled run saves its
    last step and ends the prompt as ComfyUI's cancel does."""
    if result.interrupted:
        if result.steps_done > 0:
            _save_partial(lora, name, result, "training cancelled")
        comfy.model_management.interrupt_current_processing(False)
        raise comfy.model_management.InterruptProcessingException()
    te = lora.has_text_encoder
    trained_model, trained_clip, _ = apply_lora(patcher, clip if te else None, lora.state_dict(), 1.0,
                                                1.0 if te else 0.0, f"trained '{name}'")
    outputs = (trained_model, lora, {"loss": result.losses, "name": name, "warnings": result.warnings,
                                     "validation": validate.history if validate else []},
               trained_clip if te else clip, None, None)  # the low-noise expert's outputs: two-expert runs only
    if previewer is not None and previewer.latest:
        return io.NodeOutput(*outputs, ui=ui.PreviewImage(torch.cat(previewer.latest), cls=node))
    return io.NodeOutput(*outputs)
