"""Train LoRA on a real ComfyUI in this process with the random full SD1.5:
it learns, captions stay paired, runs are byte-deterministic, strength scales the delta exactly, and a
LoRA for another architecture is refused with a count of what matched."""

from __future__ import annotations

import pytest
import torch

from .comfy_inprocess import call_node

BASE = {
    "steps": 2, "learning_rate": 1e-3, "rank": 4, "alpha": 4.0, "target_preset": "attention", "batch_size": 1,
    "grad_accumulation": 1, "lr_schedule": "constant", "warmup_steps": 0, "timestep_sampling": "uniform",
    "precision": "auto", "gradient_checkpointing": True, "seed": 0, "output_name": "inprocess",
}


def _dataset(folder, **kwargs):
    (dataset, _summary, _captions) = call_node("LoraLabDataset", folder=str(folder), resolution=64,
                                    trigger_word=kwargs.get("trigger_word", ""), default_caption="")
    return dataset


def _train(sd15, dataset, **inputs):
    model, clip, vae = sd15
    return call_node("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=dataset, **dict(BASE, **inputs))[:4]  # MODEL, LORA, LOSS, CLIP (two more outputs: the low-noise expert's)


def _eval_loss(patcher, dataset, vae, clip) -> float:
    """Mean loss over the dataset's images at fixed noise levels with fixed noise, under inference_mode as ComfyUI
    runs nodes (loading a patched fp8 model with grad enabled would make ComfyUI's own rounding fail)."""
    with torch.inference_mode():
        return _eval_loss_inner(patcher, dataset, vae, clip)


def _eval_loss_inner(patcher, dataset, vae, clip) -> float:
    import comfy.model_management

    from lora_lab.lora_core.training.validation import ValidationLoss
    from lora_lab.nodes.comfy_backend import ComfyBackend
    from lora_lab.nodes.training_data import prepare_training_data

    comfy.model_management.load_models_gpu([patcher])
    data = prepare_training_data(patcher, dataset, vae, clip, None, 1, 0)
    return ValidationLoss(ComfyBackend(patcher), data.samples, every=0, seed=1234).evaluate()


@pytest.mark.slow
def test_it_learns_on_random_sd15(sd15, dataset_dir, capsys):
    model, clip, vae = sd15
    dataset = _dataset(dataset_dir)
    before = _eval_loss(model, dataset, vae, clip)
    trained, _lora, loss, _clip = _train(sd15, dataset, steps=30, learning_rate=2e-3, rank=8, alpha=8.0,
                                  target_preset="all_linear", seed=1)
    after = _eval_loss(trained, dataset, vae, clip)
    _eval_loss(model, dataset, vae, clip)  # leave the base weights loaded for the next test
    with capsys.disabled():
        print(f"\nit learns (random SD1.5, 4 images, 30 steps, rank 8 all_linear, lr 2e-3): "
              f"fixed-noise eval loss {before:.4f} -> {after:.4f} ({100 * (after - before) / before:+.1f}%); "
              f"train losses {[round(x, 6) for x in loss['loss']]}; eval after {after!r}")
    assert after < 0.8 * before, f"eval loss did not drop clearly: {before} -> {after}"


def test_captions_stay_paired_in_a_batch(sd15, tmp_path):
    from PIL import Image

    for name, color, caption in (("a", (255, 0, 0), "a red square"), ("b", (0, 0, 255), "a blue circle")):
        Image.new("RGB", (64, 64), color).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(caption)
    model, clip, _vae = sd15
    encodings = {c: clip.encode_from_tokens_scheduled(clip.tokenize(c))[0][0][0]
                 for c in ("a red square", "a blue circle")}

    calls = []

    def record(module, args, kwargs):
        context = kwargs.get("context")
        calls.append((args[0].shape[0], context.detach().clone()))

    handle = model.model.diffusion_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _train(sd15, _dataset(tmp_path), steps=3, batch_size=2)
    finally:
        handle.remove()
    assert len(calls) == 3, f"expected one model call per step, got {len(calls)}"
    for batch, context in calls:
        assert batch == 2 and context.shape[0] == 2, "each step must run exactly the 2 samples once"
        matched = []
        for row in context:
            hits = [c for c, e in encodings.items() if torch.allclose(row, e, atol=1e-5)]
            assert len(hits) == 1, "a sample's context is not exactly one caption's encoding (averaged?)"
            matched += hits
        assert sorted(matched) == ["a blue circle", "a red square"], matched


def test_same_seed_gives_byte_identical_lora(sd15, dataset_dir):
    from lora_lab.lora_core.files.safetensors_io import safetensors_bytes

    dataset = _dataset(dataset_dir)
    files = []
    for _ in range(2):
        _model, lora, _loss, _clip = _train(sd15, dataset, seed=11)
        files.append(safetensors_bytes(lora.state_dict(), lora.metadata))
    _model, other, _loss, _clip = _train(sd15, dataset, seed=12)
    assert files[0] == files[1], "same seed and inputs must give the same bytes"
    assert files[0] != safetensors_bytes(other.state_dict(), other.metadata), "the seed must matter"


def test_strength_scales_the_delta_exactly_through_comfy_loader(sd15, dataset_dir, tmp_path):
    import comfy.lora
    import folder_paths

    folder_paths.add_model_folder_path("loras", str(tmp_path), is_default=True)
    model, clip, _vae = sd15
    _m, lora, _l, _c = _train(sd15, _dataset(dataset_dir), steps=2)
    (path,) = call_node("LoraLabSaveLora", lora=lora, name="strength")

    def deltas(strength):
        patched, _clip = call_node("LoraLoader", model=model, clip=clip, lora_name="strength.safetensors",
                                   strength_model=strength, strength_clip=strength)
        out = {}
        state = model.model.state_dict()
        for key in sorted(patched.patches)[:12]:
            weight = state[key].float().clone()
            out[key] = comfy.lora.calculate_weight(patched.patches[key], weight.clone(), key) - weight
        return out

    one = deltas(1.0)
    assert one and any(d.abs().max() > 0 for d in one.values())
    for s in (0.5, -1.0, 2.5):
        scaled = deltas(s)
        for key, d in one.items():
            torch.testing.assert_close(scaled[key], s * d, rtol=1e-5, atol=1e-7, msg=f"{key} at strength {s}")


def test_lora_for_another_architecture_is_refused_with_counts(sd15, tmp_path):
    import folder_paths
    from safetensors.torch import save_file

    from lora_lab.lora_core.errors import LoraFormatError

    folder_paths.add_model_folder_path("loras", str(tmp_path), is_default=True)
    flux_like = {}
    for name in ("double_blocks_0_img_attn_qkv", "single_blocks_0_linear1"):
        flux_like[f"lora_unet_{name}.lora_down.weight"] = torch.zeros(4, 3072)
        flux_like[f"lora_unet_{name}.lora_up.weight"] = torch.zeros(9216, 4)
        flux_like[f"lora_unet_{name}.alpha"] = torch.tensor(4.0)
    save_file(flux_like, str(tmp_path / "flux_like.safetensors"))
    model, clip, _vae = sd15
    # ComfyUI imports the pack under its folder's path, so the class is the pack's twin of lora_lab's
    with pytest.raises(Exception, match=r"none of its 2 modules match this model") as raised:
        call_node("LoraLabLoadLora", model=model, clip=clip, lora_name="flux_like.safetensors",
                  strength_model=1.0, strength_clip=1.0)
    assert type(raised.value).__name__ == LoraFormatError.__name__


def test_training_runs_in_comfyui_training_mode(sd15, dataset_dir):
    """ComfyUI (August 2026 on) picks backward-capable kernels only while comfy.model_management.in_training is
    set, as its native trainer sets it: every training forward sees it set, and it is restored afterwards. Seen
    from inside the model's own call chain, through a model_function_wrapper (which training honours)."""
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        pytest.skip("this ComfyUI has no in_training switch (January 2026)")
    model, clip, vae = sd15
    seen: list[bool] = []

    def wrapper(apply_model, args):
        seen.append(mm.in_training)
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched = model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    call_node("LoraLabTrain", model=patched, clip=clip, vae=vae, dataset=_dataset(dataset_dir), **BASE)
    assert seen and all(seen), seen
    assert mm.in_training is False


def test_caption_cache_identity_includes_the_text_encoders_compute_dtype(sd15):
    """The same CLIP computing in another dtype gives other encodings: it must not read the first one's cache."""
    from lora_lab.nodes.comfy_encoders import clip_identity

    _model, clip, _vae = sd15
    other = clip.clone()
    other.patcher.set_model_compute_dtype(torch.bfloat16)
    assert clip_identity(other) != clip_identity(clip)
    assert clip_identity(clip.clone()) == clip_identity(clip)


def test_auto_precision_is_bf16_on_every_accelerator_comfyui_computes_bf16_on(comfy, monkeypatch):
    """CUDA, XPU and MPS alike (MPS autocast needs torch >= 2.5); never on the CPU; never where ComfyUI says no."""
    from lora_lab.lora_core.training.devices import autocast_available
    from lora_lab.nodes.train_node import resolve_precision

    monkeypatch.setattr(comfy, "should_use_bf16", lambda device=None, *a, **k: True)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    for kind in ("cuda", "xpu", "mps"):
        expected = "bf16" if autocast_available(kind) else "fp32"
        assert resolve_precision("auto", torch.device(kind)) == expected, kind
    assert resolve_precision("fp16", torch.device("mps")) == "fp16"
    monkeypatch.setattr(comfy, "should_use_bf16", lambda device=None, *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"
