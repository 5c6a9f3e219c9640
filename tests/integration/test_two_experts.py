"""Wan 2.2 A14B's two experts in one Train LoRA run, in a real ComfyUI (in this process), on two random small Wan
experts: every step trains the expert its sampled sigma belongs to and the step counts follow the sigmas; each
LoRA file loads onto its own expert with every key mapped; a cancelled run resumes byte for byte for both files;
experts of different families or different models are refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from .comfy_inprocess import call_node, register_lora_lab_nodes
from .test_first_frame import clip_dataset

pytest.importorskip("av", reason="PyAV reads the training videos")

SETTINGS = dict(learning_rate=5e-3, rank=4, alpha=4.0, target_preset="attention", batch_size=1, grad_accumulation=1,
                lr_schedule="cosine", warmup_steps=0, timestep_sampling="auto", precision="fp32",
                gradient_checkpointing=True, seed=3)


@pytest.fixture(scope="module")
def experts(comfy, model_file, tmp_path_factory):
    """(high MODEL, low MODEL, Wan VAE, loras folder) through the stock loaders."""
    import folder_paths

    register_lora_lab_nodes()
    paths = {k: model_file(k) for k in ("wan22_a14b_high_small", "wan22_a14b_low_small", "wan_vae")}
    folder_paths.add_model_folder_path("diffusion_models", str(paths["wan22_a14b_high_small"].parent))
    folder_paths.add_model_folder_path("vae", str(paths["wan_vae"].parent))
    loras = tmp_path_factory.mktemp("expert_loras")
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    (high,) = call_node("UNETLoader", unet_name=paths["wan22_a14b_high_small"].name, weight_dtype="default")
    (low,) = call_node("UNETLoader", unet_name=paths["wan22_a14b_low_small"].name, weight_dtype="default")
    (vae,) = call_node("VAELoader", vae_name=paths["wan_vae"].name)
    return high, low, vae, loras


def _train(experts, dataset, conds, **inputs):
    high, low, vae, _ = experts
    return call_node("LoraLabTrain", model=high, model_low_noise=low, vae=vae, dataset=dataset, conditioning=conds,
                     **dict(SETTINGS, **inputs))


def _file_bytes(lora) -> bytes:
    from lora_lab.lora_core.files.safetensors_io import safetensors_bytes

    return safetensors_bytes(lora.state_dict(), lora.metadata)


def test_each_step_trains_the_expert_of_its_sigma(experts, tmp_path):
    """Through the real ComfyBackends: the sigmas each expert saw lie on its side of Wan's boundary."""
    from lora_lab.lora_core.training.experts import EXPERTS, train_experts
    from lora_lab.lora_core.training.trainer import TrainConfig
    from lora_lab.nodes.comfy_backend import ComfyBackend
    from lora_lab.nodes.expert_training import default_boundary
    from lora_lab.nodes.rope_autograd import ensure_rope_autograd
    from lora_lab.nodes.training_data import prepare_training_data
    from lora_lab.nodes.training_mode import comfy_training_mode

    high, low, vae, _ = experts
    dataset, conds = clip_dataset(tmp_path / "clips", count=2)
    with torch.inference_mode():
        data = prepare_training_data(high, dataset, vae, None, conds, 1, seed=0)
    boundary = default_boundary(high.model)
    assert boundary == 0.875  # Wan 2.2 T2V's; I2V experts take 0.9 (the refusal test checks it)
    backends = {EXPERTS[0]: ComfyBackend(high), EXPERTS[1]: ComfyBackend(low)}
    seen = {name: [] for name in EXPERTS}
    for name, backend in backends.items():
        denoise = backend.denoise
        backend.denoise = lambda x, sigma, conds, d=denoise, n=name: (seen[n].append(sigma.clone()), d(x, sigma, conds))[1]
    steps = 60
    config = TrainConfig(steps=steps, learning_rate=1e-4, rank=4, alpha=4.0, targets="attention", seed=1,
                         timestep_sampling="logit_normal")
    ensure_rope_autograd()
    with comfy_training_mode():  # as Train LoRA runs it: ComfyUI's training switch, autograd-able rope
        result = train_experts(backends, data.samples, config, boundary)
    sigmas = {n: torch.cat(s) for n, s in seen.items()}
    assert bool((sigmas[EXPERTS[0]] >= boundary).all()) and bool((sigmas[EXPERTS[1]] < boundary).all())
    counts = [len(result.results[n].losses) for n in EXPERTS]
    assert counts == [len(sigmas[n]) for n in EXPERTS] and sum(counts) == steps
    # ComfyUI's Wan sampling (shift 8): sigma >= 0.875 where u >= 0.875 / (8 - 7 x 0.875); u logit-normal
    u_b = 0.875 / (8 - 7 * 0.875)
    p = 0.5 * math.erfc(math.log(u_b / (1 - u_b)) / math.sqrt(2))
    assert abs(counts[0] - steps * p) < 4 * math.sqrt(steps * p * (1 - p)), (counts, steps * p)


def test_cancel_then_resume_is_byte_identical_for_both_experts(experts, tmp_path):
    import comfy.model_management
    import comfy.utils

    loras = experts[3]
    dataset, conds = clip_dataset(tmp_path / "clips", count=2)
    common = dict(steps=6, output_name="pair")
    straight = _train(experts, dataset, conds, **common)
    high, low = experts[0], experts[1]
    forwards = []

    def cancel_in_step_four(module, args):  # the user presses cancel; ComfyUI's ops raise mid-forward
        forwards.append(1)
        if len(forwards) == 4:
            comfy.model_management.interrupt_current_processing(True)
            comfy.model_management.throw_exception_if_processing_interrupted()

    hooks = [m.model.diffusion_model.register_forward_pre_hook(cancel_in_step_four) for m in (high, low)]
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _train(experts, dataset, conds, **common)
    finally:
        for hook in hooks:
            hook.remove()
        comfy.model_management.interrupt_current_processing(False)
    for expert in ("high_noise", "low_noise"):
        assert (loras / f"pair_{expert}_step00003.safetensors").exists()
        assert (loras / f"pair_{expert}_step00003.state").exists()
    resumed = _train(experts, dataset, conds, resume_from="pair_low_noise_step00003.state", **common)
    assert _file_bytes(resumed[1]) == _file_bytes(straight[1])  # high noise
    assert _file_bytes(resumed[5]) == _file_bytes(straight[5])  # low noise
    assert resumed[2]["loss"] == straight[2]["loss"] and resumed[2]["experts"] == straight[2]["experts"]


def test_save_every_writes_both_and_each_file_loads_onto_its_expert(experts, tmp_path):
    import comfy.lora
    import comfy.utils

    high, low, _vae, loras = experts
    dataset, conds = clip_dataset(tmp_path / "clips", count=2)
    outputs = _train(experts, dataset, conds, steps=4, save_every=2, output_name="periodic")
    assert outputs[4] is not None and outputs[1].metadata["lora_lab_expert"] == "high_noise"
    assert outputs[5].metadata["lora_lab_expert"] == "low_noise"
    steps = [int(outputs[i].metadata["lora_lab_expert_steps"]) for i in (1, 5)]
    assert sum(steps) == 4 and outputs[2]["experts"].count("high_noise") == steps[0]
    for expert, model in (("high_noise", high), ("low_noise", low)):
        path = loras / f"periodic_{expert}_step00002.safetensors"
        sd = comfy.utils.load_torch_file(str(path))
        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        assert len(comfy.lora.load_lora(sd, key_map)) * 3 == len(sd)  # every module (down, up, alpha) mapped
        assert (loras / f"periodic_{expert}_step00002.state").exists()
    # the in-graph outputs carry each expert's own LoRA: its patches are on that expert's clone only
    for out, lora in ((outputs[0], outputs[1]), (outputs[4], outputs[5])):
        assert len(out.patches) == len(lora.weights.modules)


def test_experts_of_different_families_or_models_are_refused(experts, model_file, tmp_path):
    import folder_paths

    from lora_lab.nodes.expert_training import default_boundary

    high, _low, vae, _ = experts
    dataset, conds = clip_dataset(tmp_path / "clips")
    sd3 = model_file("sd3_small")
    i2v = model_file("wan21_i2v_small")
    folder_paths.add_model_folder_path("diffusion_models", str(sd3.parent))
    (other_family,) = call_node("UNETLoader", unet_name=sd3.name, weight_dtype="default")
    (other_model,) = call_node("UNETLoader", unet_name=i2v.name, weight_dtype="default")
    assert default_boundary(other_model.model) == 0.9  # Wan 2.2 I2V's, read from the image channels
    for low, says in ((other_family, "different families (model: wan, model_low_noise: sd3)"),
                      (other_model, "different models (model: WAN21_T2V, model_low_noise: WAN21_I2V")):
        with pytest.raises(Exception) as caught:  # the node's own module copy of TrainingError
            call_node("LoraLabTrain", model=high, model_low_noise=low, vae=vae, dataset=dataset, conditioning=conds,
                      steps=2, output_name="bad", **SETTINGS)
        assert type(caught.value).__name__ == "TrainingError" and says in str(caught.value), str(caught.value)
    assert not list(Path(folder_paths.get_folder_paths("loras")[0]).glob("bad*"))
