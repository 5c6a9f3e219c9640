"""Train LoRA with a second MODEL: Wan 2.2 A14B's high-noise and low-noise experts in one run
(lora_core/training/experts.py), in ComfyUI's terms.

The model input is the high-noise expert, model_low_noise the low-noise one; each step's sampled sigma picks the
expert (sigma >= boundary: high noise). Each expert gets its own LoRA, named <output_name>_high_noise and
<output_name>_low_noise; the node's model/lora outputs carry the high-noise expert's, model_low_noise/lora_low_noise
the other's. ComfyUI's memory manager is asked for one expert at a time (load_for_training when the expert in use
changes), so the other may be offloaded while it waits. Partial saves (save_every, cancel, NaN, out of memory)
write both LoRAs, each with its training state beside it, under one step name; resume_from names either state
and the run continues from the pair.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import comfy.model_management
from comfy_api.latest import io

from ..lora_core.errors import NonFiniteLossError, TrainingCrashed, TrainingError, TrainingOutOfMemory
from ..lora_core.files.lora_file import save_lora_file
from ..lora_core.training.experts import EXPERTS, ExpertsResult, RoutedBackend, Switcher, train_experts
from ..lora_core.training.state import TrainState, save_train_state, state_path
from ..lora_core.training.trainer import StepReport, TrainConfig
from ..lora_core.training.validation import ValidationLoss
from .base_loras import base_loras
from .bypass_adapters import trainable_bypass_adapters
from .comfy_backend import ComfyBackend
from .comfy_paths import loras_directory
from .family import model_family
from .first_frame_conds import first_frame_kind
from .lora_apply import apply_lora
from .lora_state import TrainedLora, trained_lora
from .rope_autograd import ensure_rope_autograd
from .run_files import load_resume, resolve_resume
from .training_mode import comfy_training_mode

log = logging.getLogger("lora_lab")

# Wan 2.2's own configs switch experts at these timesteps (x 1000): text-to-video and image-to-video A14B
WAN22_BOUNDARY = {"t2v": 0.875, "i2v": 0.9}


def default_boundary(model) -> float:
    """Wan 2.2's boundary for the experts' kind: I2V experts take image channels (first_frame_kind "concat")."""
    return WAN22_BOUNDARY["i2v" if first_frame_kind(model) == "concat" else "t2v"]


def check_experts(high, low) -> None:
    """Both MODELs must be the two experts of one model: one family, one architecture, one latent space."""
    families = model_family(high), model_family(low)
    if families[0] != families[1]:
        raise TrainingError(f"LoRA Lab: the two experts are of different families (model: {families[0]}, "
                            f"model_low_noise: {families[1]}); connect the high- and low-noise experts of one model")
    kinds = [(type(m.model.model_config).__name__, type(m.model).__name__,
              m.get_model_object("latent_format").latent_channels,
              m.model.diffusion_model.patch_embedding.weight.shape[1] if hasattr(m.model.diffusion_model,
                                                                                 "patch_embedding") else None)
             for m in (high, low)]
    if kinds[0] != kinds[1]:
        raise TrainingError(f"LoRA Lab: the two experts are different models (model: {kinds[0][0]}, "
                            f"model_low_noise: {kinds[1][0]}, input channels {kinds[0][3]} vs {kinds[1][3]}); "
                            "connect the high- and low-noise experts of one model")


def refuse_unsupported(text_encoder_options, previews, preservation=None) -> None:
    if preservation:
        raise TrainingError("LoRA Lab: preservation with two experts is not supported yet; train the experts "
                            "without the preservation input")
    if text_encoder_options:
        raise TrainingError("LoRA Lab: text-encoder training with two experts is not supported (the text encoder "
                            "is shared by both); train the experts' LoRAs only")
    if previews:
        raise TrainingError("LoRA Lab: previews with two experts are not supported yet; sample the outputs "
                            "after training (both MODEL outputs carry their LoRA)")


def expert_names(name: str) -> dict[str, str]:
    return {expert: f"{name}_{expert}" for expert in EXPERTS}


def save_experts(loras: dict[str, TrainedLora], states: dict[str, TrainState | None], name: str,
                 step: int) -> dict[str, Path]:
    """<name>_<expert>_stepNNNNN.safetensors for both experts, never overwriting (one suffix free for both), each
    with its .state beside it."""
    folder = loras_directory()
    folder.mkdir(parents=True, exist_ok=True)
    counter = 0
    while True:
        tail = f"_step{step:05d}" + (f"_{counter:05d}" if counter else "")
        paths = {e: folder / f"{stem}{tail}.safetensors" for e, stem in expert_names(name).items()}
        if not any(p.exists() or state_path(p).exists() for p in paths.values()):
            break
        counter += 1
    for expert, path in paths.items():
        lora = loras[expert]
        save_lora_file(path, lora.state_dict(), {**lora.metadata, "ss_output_name": path.stem})
        if states[expert] is not None:
            save_train_state(state_path(path), states[expert])
    return paths


def expert_states(resume_from: str) -> dict[str, TrainState] | None:
    """Both experts' states from the one resume_from names (either), its partner found by the expert in its name."""
    path = resolve_resume(resume_from)
    if path is None:
        return None
    found = [e for e in EXPERTS if f"_{e}_step" in path.name]
    if not found:
        raise TrainingError(f"resume_from: {path.name} is not a two-expert state (<name>_high_noise_stepNNNNN.state "
                            "or <name>_low_noise_stepNNNNN.state, written together by save_every or a stop)")
    mine = found[-1]
    other = EXPERTS[1 - EXPERTS.index(mine)]
    head, _, tail = path.name.rpartition(f"_{mine}_step")
    partner = path.with_name(f"{head}_{other}_step{tail}")
    if not partner.exists():
        raise TrainingError(f"resume_from: {path.name} needs its partner {partner.name}, written with it; not found")
    return {mine: load_resume(str(path)), other: load_resume(str(partner))}


class ExpertStepHooks:
    """The progress bar, the live chart (each step tagged with its expert) and save_every for both LoRAs."""

    def __init__(self, progress, finished, name: str, save_every: int):
        self.progress, self.finished, self.name, self.save_every = progress, finished, name, save_every
        self.saved: list[Path] = []

    def __call__(self, report: StepReport) -> None:
        self.progress(report)
        if self.save_every and report.step % self.save_every == 0 and report.step < report.total:
            snapshot = report.snapshot()
            paths = save_experts(self.finished(snapshot), _states(snapshot), self.name, report.step)
            self.saved += paths.values()
            log.info("LoRA Lab: step %d saved to %s (with their training states)", report.step,
                     ", ".join(str(p) for p in paths.values()))


def _states(result: ExpertsResult) -> dict[str, TrainState | None]:
    return {e: r.state for e, r in result.results.items()}


def train_two_experts(node, patchers: dict, clip, dataset, data, config: TrainConfig, family: str, name: str,
                      boundary: float, save_every: int, resume_from: str, validation_every: int, progress,
                      load) -> io.NodeOutput:
    """The run (patchers keyed by EXPERTS); load(patcher, backend) asks ComfyUI's memory manager for one expert."""
    boundary = boundary or default_boundary(patchers[EXPERTS[0]].model)
    resume = expert_states(resume_from)
    underneath = {e: base_loras(p) for e, p in patchers.items()}
    backends = {e: ComfyBackend(p) for e, p in patchers.items()}
    switcher = Switcher(lambda e: load(patchers[e], backends[e]))
    validate = (ValidationLoss(RoutedBackend(backends, boundary, switcher), data.validation, validation_every,
                               last_step=config.steps, batch_size=config.batch_size, precision=config.precision)
                if data.validation and validation_every > 0 else None)
    names = expert_names(name)

    def finished(result: ExpertsResult) -> dict[str, TrainedLora]:
        out = {}
        for e, r in result.results.items():
            lora = trained_lora(r, config, dataset, family, names[e], backends[e].prediction, underneath[e])
            lora.weights.metadata.update({"lora_lab_expert": e, "lora_lab_expert_boundary": str(boundary),
                                          "lora_lab_expert_steps": str(r.steps_done)})
            out[e] = lora
        return out

    on_step = ExpertStepHooks(progress, finished, name, save_every)
    ensure_rope_autograd()
    with torch.inference_mode(False), torch.enable_grad(), comfy_training_mode(), \
            trainable_bypass_adapters(*patchers.values()):
        for patcher in patchers.values():
            patcher.pre_run()
        try:
            result = train_experts(backends, data.samples, config, boundary, on_step=on_step,
                                   should_stop=comfy.model_management.processing_interrupted,
                                   interrupt_on=(comfy.model_management.InterruptProcessingException,),
                                   order=data.order, resume=resume, validate=validate, switcher=switcher)
        except (NonFiniteLossError, TrainingOutOfMemory, TrainingCrashed) as error:
            raise _saved_after(error, finished, name) from error
        finally:
            for patcher in patchers.values():
                patcher.cleanup()
    log.info("LoRA Lab: two experts, %d steps: %d high-noise, %d low-noise; %d switches", result.steps_done,
             result.experts.count(EXPERTS[0]), result.experts.count(EXPERTS[1]), result.switches)
    loras = finished(result)
    if result.interrupted:
        if result.steps_done > 0:
            paths = save_experts(loras, _states(result), name, result.steps_done)
            log.warning("LoRA Lab: training cancelled; partial LoRAs (%d steps) saved to %s", result.steps_done,
                        ", ".join(str(p) for p in paths.values()))
        comfy.model_management.interrupt_current_processing(False)
        raise comfy.model_management.InterruptProcessingException()
    models = {e: apply_lora(patchers[e], None, loras[e].state_dict(), 1.0, 0.0, f"trained '{names[e]}'")[0]
              for e in EXPERTS}
    loss = {"loss": result.losses, "name": name, "warnings": [w for r in result.results.values() for w in r.warnings],
            "validation": validate.history if validate else [], "experts": list(result.experts),
            "expert_losses": {e: r.losses for e, r in result.results.items()}}
    return io.NodeOutput(models[EXPERTS[0]], loras[EXPERTS[0]], loss, clip, models[EXPERTS[1]], loras[EXPERTS[1]])


def _saved_after(error, finished, name: str) -> Exception:
    kind = {NonFiniteLossError: "loss became non-finite", TrainingOutOfMemory: "out of memory"}.get(
        type(error), "training failed")
    if error.result is None:
        return type(error)(f"LoRA Lab: {error}. Nothing was saved.")
    done = error.result.steps_done
    if done == 0:
        return type(error)(f"LoRA Lab: {error}. No step was completed, so nothing was saved.")
    paths = save_experts(finished(error.result), _states(error.result), name, done)
    del error.result
    comfy.model_management.soft_empty_cache()
    log.warning("LoRA Lab: %s; partial LoRAs (%d steps) saved", kind, done)
    return type(error)(f"LoRA Lab: {error}. Saved both LoRAs after step {done} to "
                       f"{', '.join(str(p) for p in paths.values())}, each with the state to continue from beside it.")
