"""Train LoRA's paths in a real ComfyUI, in this process: training runs the function the sampler runs (a shift
or prediction node upstream changes what training draws exactly as it changes sampling), "auto" picks
logit-normal for flow models, the metadata is honest, T5-length conds batch, mixed shapes accumulate, a model
that already carries a LoRA trains and says so, and an out-of-memory error leaves a loadable LoRA + state."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from .comfy_inprocess import call_node, load_builtin_extras, load_checkpoint, register_lora_lab_nodes
from .sample_data import make_image_folder

TRAIN = {
    "steps": 2, "learning_rate": 1e-3, "rank": 4, "alpha": 4.0, "target_preset": "attention", "batch_size": 1,
    "grad_accumulation": 1, "lr_schedule": "constant", "warmup_steps": 0, "timestep_sampling": "auto",
    "precision": "auto", "gradient_checkpointing": True, "seed": 0,
}


@pytest.fixture(scope="module")
def loras(comfy, tmp_path_factory):
    """A models/loras folder of this test process, first in ComfyUI's list (Save/partial saves land here)."""
    import folder_paths

    import nodes

    if "LoraLabTrain" not in nodes.NODE_CLASS_MAPPINGS:
        register_lora_lab_nodes()
    if "ModelSamplingSD3" not in nodes.NODE_CLASS_MAPPINGS:
        load_builtin_extras(("nodes_model_advanced.py",))
    path = tmp_path_factory.mktemp("loras")
    folder_paths.add_model_folder_path("loras", str(path), is_default=True)
    return path


@pytest.fixture(scope="module")
def sd3(comfy, model_file):
    import comfy.sd
    import comfy.utils

    model = comfy.sd.load_diffusion_model(str(model_file("sd3_small")))
    clip = comfy.sd.load_clip([str(model_file("clip_l"))], clip_type=comfy.sd.CLIPType.SD3)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(model_file("flux_vae"))))
    return model, clip, vae


@pytest.fixture(scope="module")
def sd15(comfy, sd15_checkpoint):
    return load_checkpoint(sd15_checkpoint)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), count=2, size=64)


def _dataset(folder):
    return call_node("LoraLabDataset", folder=str(folder), resolution=64, trigger_word="", default_caption="")[0]


def _train(model, clip, vae, folder, name, **inputs):
    return call_node("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=_dataset(folder),
                     **dict(TRAIN, output_name=name, **inputs))[:3]  # MODEL, LORA, LOSS (CLIP is 4th)


def _metadata(lora) -> dict:
    return lora.metadata


# --- sampling settings from the graph --------------------------------------------------------------------
def test_shift_node_upstream_changes_training_sigmas_exactly_as_sampling(sd3, loras, images):
    import comfy.model_management
    import comfy.samplers

    from lora_lab.nodes.comfy_backend import ComfyBackend

    model, clip, vae = sd3
    shifted = call_node("ModelSamplingSD3", model=model, shift=6.0)[0]
    plain_backend, shifted_backend = ComfyBackend(model), ComfyBackend(shifted)
    u = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    plain, trained = plain_backend.sigma_from_u(u), shifted_backend.sigma_from_u(u)
    # the sampler reads the same object from the patcher
    sampling = shifted.get_model_object("model_sampling")
    assert shifted_backend.sampling is sampling and plain_backend.sampling is not sampling
    assert torch.allclose(trained, torch.tensor([float(sampling.percent_to_sigma(1 - float(x))) for x in u]))
    # flow shift: sigma' = s sigma / (1 + (s - 1) sigma) of the unshifted model's sigma (SD3's own shift is 3)
    base = plain / (3.0 - 2.0 * plain)  # undo shift 3
    assert torch.allclose(trained, 6.0 * base / (1 + 5.0 * base), atol=1e-5)
    assert not torch.allclose(trained, plain)
    sampler_sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", 4)
    assert torch.allclose(sampler_sigmas[:-1], torch.tensor([float(sampling.percent_to_sigma(p)) for p in (0, .25, .5, .75)]),
                          atol=1e-3)
    # once loaded for training, apply_model's own sampling object is the patched one too
    comfy.model_management.load_models_gpu([shifted])
    assert shifted.model.model_sampling is sampling


def test_prediction_node_upstream_trains_v_and_metadata_says_so(sd15, loras, images):
    model, clip, vae = sd15
    v_model = call_node("ModelSamplingDiscrete", model=model, sampling="v_prediction", zsnr=True)[0]
    _, lora, loss = _train(v_model, clip, vae, images, "vpred", steps=1)
    meta = _metadata(lora)
    assert meta["lora_lab_prediction"] == "v" and meta["lora_lab_timestep_sampling"] == "uniform"
    assert meta["lora_lab_compute_dtype"] == "fp32" and meta["ss_mixed_precision"] == "no"
    _, eps_lora, _ = _train(model, clip, vae, images, "eps", steps=1)
    assert _metadata(eps_lora)["lora_lab_prediction"] == "eps"


def test_auto_sampling_is_logit_normal_for_flow_and_metadata_is_honest(sd3, loras, images):
    model, clip, vae = sd3
    _, lora, _ = _train(model, clip, vae, images, "flow_auto", steps=1)
    meta = _metadata(lora)
    assert meta["lora_lab_prediction"] == "flow" and meta["lora_lab_timestep_sampling"] == "logit_normal"
    assert meta["lora_lab_compute_dtype"] == "fp32"
    _, bf16, _ = _train(model, clip, vae, images, "flow_bf16", steps=1, precision="bf16")
    assert _metadata(bf16)["lora_lab_compute_dtype"] == "bf16" and _metadata(bf16)["ss_mixed_precision"] == "bf16"



def test_compute_dtype_node_upstream_is_what_runs_and_what_metadata_says(sd3, loras, images):
    """ModelComputeDtype sets the model's cast dtype as an object patch on the patcher: with precision fp32 (no
    autocast) the layers then compute in fp16, so training must see fp16 there (loss scaling on) and say so."""
    from lora_lab.nodes.comfy_backend import ComfyBackend

    model, clip, vae = sd3
    fp16_model = call_node("ModelComputeDtype", model=model, dtype="fp16")[0]
    assert ComfyBackend(fp16_model).compute_dtype == torch.float16
    assert ComfyBackend(model).compute_dtype != torch.float16
    _, lora, loss = _train(fp16_model, clip, vae, images, "compute_fp16", steps=1, precision="fp32")
    assert _metadata(lora)["lora_lab_compute_dtype"] == "fp16"
    assert all(torch.isfinite(torch.tensor(loss["loss"])))



def test_memory_asked_of_comfyui_counts_the_chosen_optimizers_state(sd3):
    """load_for_training asks ComfyUI for activations + LoRA weights, grads and the optimizer's own state: Prodigy
    keeps 4 fp32 values per LoRA weight, AdamW 2, AdamW8bit about 0.5, and the request differs by exactly that."""
    from lora_lab.lora_core.optimizers import OPTIMIZERS
    from lora_lab.lora_core.training.trainer import TrainConfig
    from lora_lab.nodes.comfy_backend import ComfyBackend
    from lora_lab.lora_core.training.memory_estimate import adapter_parameter_count
    from lora_lab.nodes.train_node import load_for_training

    model = sd3[0].clone()
    backend = ComfyBackend(model)
    asked = {}
    for name in ("adamw", "prodigy", "adamw8bit"):
        config = TrainConfig(steps=1, learning_rate=1e-4, rank=16, alpha=16.0, targets="attention", optimizer=name)
        asked[name] = load_for_training(model, backend, config, (16, 8, 8))
    params = adapter_parameter_count(backend, config)
    assert params > 0
    for name in ("prodigy", "adamw8bit"):
        expected = params * 4 * (OPTIMIZERS[name].state_slots - OPTIMIZERS["adamw"].state_slots)
        assert abs(asked[name] - asked["adamw"] - expected) <= 2, (name, asked, expected)


# --- batches -----------------------------------------------------------------------------------------------
def _sd3_samples(model, lengths, shapes):
    from lora_lab.lora_core.data.samples import TrainSample
    from lora_lab.nodes.comfy_backend import encode_sample_cond

    g = torch.Generator().manual_seed(0)
    samples = []
    for length, shape in zip(lengths, shapes):
        cond = [[torch.randn(1, length, 4096, generator=g), {"pooled_output": torch.randn(1, 2048, generator=g)}]]
        latent = torch.randn(16, *shape, generator=g)
        samples.append(TrainSample(latent, encode_sample_cond(model, cond, latent, 0), f"len {length}"))
    return samples


def test_conds_of_different_t5_lengths_share_a_batch_correctly(sd3):
    import comfy.model_management

    from lora_lab.lora_core.training.trainer import TrainConfig, train
    from lora_lab.nodes.comfy_backend import ComfyBackend, concat_groups

    model = sd3[0].clone()
    comfy.model_management.load_models_gpu([model])
    backend = ComfyBackend(model)
    with torch.inference_mode(False):
        samples = _sd3_samples(model, [77, 100, 77], [(8, 8)] * 3)
        conds = [s.cond for s in samples]
        assert concat_groups(conds) == [[0, 2], [1]]  # 77 vs 100 tokens cannot be one call (the sampler's rule)
        x = torch.stack([s.latent for s in samples])
        sigma = torch.tensor([0.3, 0.5, 0.7])
        with torch.no_grad():
            together = backend.denoise(x, sigma, conds)
            alone = torch.cat([backend.denoise(x[i:i + 1], sigma[i:i + 1], [conds[i]]) for i in range(3)])
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    result = train(backend, samples, TrainConfig(steps=2, batch_size=3, rank=4, alpha=4.0, learning_rate=1e-3))
    assert result.steps_done == 2 and all(map(lambda v: v == v, result.losses))


def test_accumulation_over_mixed_latent_shapes(sd3):
    import comfy.model_management

    from lora_lab.lora_core.errors import TrainingError
    from lora_lab.lora_core.training.trainer import TrainConfig, train
    from lora_lab.nodes.comfy_backend import ComfyBackend

    model = sd3[0].clone()
    comfy.model_management.load_models_gpu([model])
    backend = ComfyBackend(model)
    with torch.inference_mode(False):
        samples = _sd3_samples(model, [77, 77], [(8, 8), (8, 12)])
    result = train(backend, samples, TrainConfig(steps=2, batch_size=1, grad_accum=2, rank=4, alpha=4.0))
    assert result.steps_done == 2
    with pytest.raises(TrainingError, match="one shape"):
        train(backend, samples, TrainConfig(steps=1, batch_size=2, rank=4, alpha=4.0))


# --- a mean-flow model ----------------------------------------------------------------------------------------------
def _hunyuan_video_15_mean_flow():
    """ComfyUI's HunyuanVideo 1.5 (step-distilled: time_r_in), tiny, as a ModelPatcher on the CPU."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher

    from .comfy_models import fill_random_

    config = dict(image_model="hunyuan_video", in_channels=65, out_channels=32, vec_in_dim=None, context_in_dim=32,
                  hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
                  theta=256, patch_size=[1, 1, 1], qkv_bias=True, guidance_embed=False, byt5=False, meanflow=True,
                  use_cond_type_embedding=False, vision_in_dim=1152, meanflow_sum=True)
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    assert type(model_config).__name__ == "HunyuanVideo15"
    model = model_config.get_model({})
    fill_random_(model.diffusion_model, 5)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def test_mean_flow_model_trains_its_instantaneous_velocity(comfy):
    """HunyuanVideo 1.5's distilled model reads the sampler's schedule (sample_sigmas) to embed the next sigma r
    beside t; training has no schedule (it was a KeyError). Each call now gets r = t, the mean flow over an empty
    interval: the instantaneous velocity that the flow loss trains. Rows of one call share t, so r is theirs."""
    from lora_lab.lora_core.training.trainer import TrainConfig, train
    from lora_lab.lora_core.data.samples import TrainSample
    from lora_lab.nodes.comfy_backend import ComfyBackend, encode_sample_cond
    from lora_lab.nodes.rope_autograd import ensure_rope_autograd
    from lora_lab.nodes.training_mode import comfy_training_mode

    patcher = _hunyuan_video_15_mean_flow()
    backend = ComfyBackend(patcher)
    assert backend.mean_flow and backend.prediction == "flow"
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode(False):
        samples = []
        for i in range(3):
            latent = torch.randn(32, 1, 4, 4, generator=g)
            cond = [[torch.randn(1, 8, 32, generator=g), {"pooled_output": torch.zeros(1, 768)}]]
            samples.append(TrainSample(latent, encode_sample_cond(patcher, cond, latent, 0), f"clip {i}"))
        x = torch.stack([s.latent for s in samples])
        sigma = torch.tensor([0.3, 0.8, 0.3])
        conds = [s.cond for s in samples]

        def sampler_call(i, schedule):
            import comfy.samplers

            c = comfy.samplers.cond_cat([conds[i].inputs()])
            c["transformer_options"] = {"sigmas": sigma[i:i + 1], "sample_sigmas": schedule,
                                        "cond_or_uncond": [0], "uuids": []}
            return patcher.model.apply_model(x[i:i + 1], sigma[i:i + 1], **c)

        with torch.no_grad():
            together = backend.denoise(x, sigma, conds)
            r_is_t = torch.cat([sampler_call(i, sigma[i:i + 1].repeat(2)) for i in range(3)])
            r_is_zero = torch.cat([sampler_call(i, torch.stack([sigma[i], torch.tensor(0.0)])) for i in range(3)])
        torch.testing.assert_close(together, r_is_t, rtol=1e-4, atol=1e-5)
        assert (r_is_t - r_is_zero).abs().max() > 1e-3 * r_is_t.abs().max()  # r really enters the model
    with comfy_training_mode():  # as Train LoRA runs it: the fused RoPE kernel has no backward
        ensure_rope_autograd()
        result = train(backend, samples, TrainConfig(steps=2, batch_size=3, rank=4, alpha=4.0, learning_rate=1e-3))
    assert result.steps_done == 2 and all(v == v for v in result.losses)


# --- a model that already carries a LoRA -------------------------------------------------------------------------
def _sample(clip, *models) -> list[torch.Tensor]:
    """Each model's latent from the stock KSampler: same caption, seed and empty 64x64 latent."""
    positive = call_node("CLIPTextEncode", text="a photo", clip=clip)[0]
    latent = call_node("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    return [call_node("KSampler", model=m, seed=3, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal",
                      positive=positive, negative=positive, latent_image=latent, denoise=1.0)[0]["samples"]
            for m in models]


def test_model_with_a_lora_underneath_trains_and_records_it(sd15, loras, images):
    from lora_lab.lora_core.files.lora_file import save_lora_file

    model, clip, vae = sd15
    _, first, _ = _train(model, clip, vae, images, "underneath", steps=2, seed=11)
    save_lora_file(loras / "underneath.safetensors", first.state_dict(), first.metadata)
    # same keys, other content, listed first: the file is told by its tensors, not its key set
    _, decoy, _ = _train(model, clip, vae, images, "decoy", steps=2, seed=13)
    save_lora_file(loras / "a_decoy.safetensors", decoy.state_dict(), decoy.metadata)
    assert set(decoy.state_dict()) == set(first.state_dict())
    base_model, base_clip = call_node("LoraLoader", model=model, clip=clip, lora_name="underneath.safetensors",
                                      strength_model=0.7, strength_clip=0.0)
    trained_model, lora, _ = _train(base_model, base_clip, vae, images, "on_top", steps=2, seed=12)
    meta = _metadata(lora)
    assert json.loads(meta["lora_lab_base_loras"]) == [{"file": "underneath.safetensors", "strength": 0.7}]
    save_lora_file(loras / "on_top.safetensors", lora.state_dict(), lora.metadata)
    reloaded = call_node("LoraLoaderModelOnly", model=base_model, lora_name="on_top.safetensors", strength_model=1.0)[0]
    in_graph, from_file, base = _sample(clip, trained_model, reloaded, base_model)
    assert (in_graph - from_file).abs().max() <= 1e-3 * in_graph.abs().max()
    assert (in_graph - base).abs().max() > 1e-5


def test_model_with_a_bypass_lora_underneath_trains_and_records_it(sd15, loras, images):
    """August's "Load LoRA (Bypass)" keeps the LoRA out of the weights, as a forward hook with its own tensors
    (loaded under inference mode): training runs through it, the metadata names it, and the trained file on top
    of the same bypass LoRA gives the in-graph MODEL's latent."""
    import nodes

    from lora_lab.lora_core.files.lora_file import save_lora_file

    if "LoraLoaderBypass" not in nodes.NODE_CLASS_MAPPINGS:
        try:
            load_builtin_extras(("nodes_lora_debug.py",))
        except Exception:  # noqa: BLE001 - January has no such file
            pass
    if "LoraLoaderBypass" not in nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("this ComfyUI has no Load LoRA (Bypass) node (added after January 2026)")
    model, clip, vae = sd15
    _, first, _ = _train(model, clip, vae, images, "bypass_base", steps=2, seed=31)
    save_lora_file(loras / "bypass_base.safetensors", first.state_dict(), first.metadata)
    base_model = call_node("LoraLoaderBypassModelOnly", model=model, lora_name="bypass_base.safetensors",
                           strength_model=0.6)[0]
    trained_model, lora, _ = _train(base_model, clip, vae, images, "on_bypass", steps=2, seed=32)
    ups = [t for k, t in lora.state_dict().items() if k.endswith("lora_up.weight")]
    assert ups and all(torch.isfinite(t).all() for t in ups) and any(t.abs().max() > 0 for t in ups)
    assert json.loads(_metadata(lora)["lora_lab_base_loras"]) == [
        {"file": "bypass_base.safetensors", "strength": 0.6, "mode": "bypass"}]
    save_lora_file(loras / "on_bypass.safetensors", lora.state_dict(), lora.metadata)
    reloaded = call_node("LoraLoaderModelOnly", model=base_model, lora_name="on_bypass.safetensors",
                         strength_model=1.0)[0]
    in_graph, from_file, base, plain = _sample(clip, trained_model, reloaded, base_model, model)
    assert (in_graph - from_file).abs().max() <= 1e-3 * in_graph.abs().max()
    assert (in_graph - base).abs().max() > 1e-5
    assert (base - plain).abs().max() > 1e-5  # the bypass LoRA really acts under both


def test_base_lora_records_name_identical_copies_and_unknown_content(sd15, loras, images):
    import shutil

    from lora_lab.lora_core.files.lora_file import save_lora_file
    from lora_lab.nodes.base_loras import base_loras

    model, clip, vae = sd15
    _, first, _ = _train(model, clip, vae, images, "original", steps=1, seed=21)
    save_lora_file(loras / "original.safetensors", first.state_dict(), first.metadata)
    shutil.copy(loras / "original.safetensors", loras / "original_copy.safetensors")
    carried = call_node("LoraLoaderModelOnly", model=model, lora_name="original.safetensors", strength_model=0.5)[0]
    assert base_loras(carried) == [{"file": "original.safetensors", "strength": 0.5,
                                    "same_content": ["original_copy.safetensors"]}]
    # both files rewritten after loading: the keys still match, the content does not
    _, other, _ = _train(model, clip, vae, images, "rewritten", steps=1, seed=22)
    for name in ("original.safetensors", "original_copy.safetensors"):
        save_lora_file(loras / name, other.state_dict(), other.metadata)
    (entry,) = base_loras(carried)
    assert entry["file"] is None and entry["strength"] == 0.5 and entry["unmatched_keys"] > 0


def test_base_lora_found_for_a_diffusers_lora_on_fused_qkv(sd3, loras):
    """SD3's q, k and v are one fused weight in ComfyUI: a diffusers-format LoRA patches its slices. The file
    is found among same-keyed files by the tensors of each slice's own names."""
    import comfy.lora
    from safetensors.torch import save_file

    from lora_lab.nodes.base_loras import base_loras

    model = sd3[0]
    state = model.model.state_dict()
    fused = sorted((prefix, target) for prefix, target in comfy.lora.model_lora_keys_unet(model.model, {}).items()
                   if prefix.startswith("transformer.") and isinstance(target, tuple)
                   and prefix.endswith((".attn.to_q", ".attn.to_k", ".attn.to_v")))[:6]
    assert len({t[0] for _p, t in fused}) < len(fused)  # slices of shared weights

    def lora_file(name: str, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        tensors = {}
        for prefix, (weight_key, (_dim, _start, size), *_) in fused:
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(4, state[weight_key].shape[1], generator=g)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(size, 4, generator=g)
        save_file(tensors, str(loras / name))

    lora_file("a_fused_decoy.safetensors", 1)
    lora_file("fused_source.safetensors", 2)
    carried = call_node("LoraLoaderModelOnly", model=model, lora_name="fused_source.safetensors",
                        strength_model=0.8)[0]
    assert base_loras(carried) == [{"file": "fused_source.safetensors", "strength": 0.8}]


# --- out of memory -------------------------------------------------------------------------------------------------
class _OOMAtStep:
    """Raises torch.OutOfMemoryError from inside a layer's forward once `step` steps have run."""

    def __init__(self, module, calls_per_step: int, step: int):
        self.calls, self.limit = 0, calls_per_step * step
        self.handle = module.register_forward_hook(self)

    def __call__(self, *_):
        self.calls += 1
        if self.calls > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")


def test_out_of_memory_leaves_a_loadable_lora_and_state(sd3, loras, images):
    from lora_lab.lora_core.training.state import load_train_state

    model, clip, vae = sd3
    layer = model.model.diffusion_model.x_embedder.proj  # runs once per forward, before any block
    oom = _OOMAtStep(layer, calls_per_step=1, step=1)
    try:
        with pytest.raises(Exception) as caught:  # the pack's class, as ComfyUI imported it
            _train(model, clip, vae, images, "oom", steps=5, gradient_checkpointing=False)
    finally:
        oom.handle.remove()
    message = str(caught.value)
    assert type(caught.value).__name__ == "TrainingOutOfMemory", message
    assert "out of memory during step 2" in message and "after step 1" in message and "batch_size" in message and "gradient_checkpointing" in message
    partial = loras / "oom_step00001.safetensors"
    state = loras / "oom_step00001.state"
    assert str(partial) in message and partial.is_file() and state.is_file()
    assert load_train_state(state).step == 1
    with safe_open(str(partial), "pt") as f:
        assert f.metadata()["ss_steps"] == "1"
    import comfy.lora
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(partial))
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    loaded = comfy.lora.load_lora(sd, key_map)
    assert len(loaded) * 3 == len(sd)  # every module (down, up, alpha) mapped by ComfyUI's own loader
