"""Train in a real ComfyUI server on a random full SD1.5, sample with the
trained MODEL, save the LoRA, reload it with the stock LoraLoader, and get the same latent."""

from __future__ import annotations

import torch
from safetensors import safe_open

from .sample_data import assert_latents_close, saved_latent
from .workflows import checkpoint_sample_workflow, train_then_sample_workflow, train_only_workflow

TRAIN = {"steps": 3, "learning_rate": 1e-3, "rank": 4, "alpha": 4.0, "seed": 3}




def test_sd15_trained_model_equals_saved_lora_through_stock_loader(comfy_server, sd15_checkpoint, dataset_dir,
                                                                   loras_dir):
    ckpt = sd15_checkpoint.name
    mark = comfy_server.log_mark()
    history = comfy_server.run(train_then_sample_workflow(ckpt, str(dataset_dir), TRAIN, save_name="sd15_roundtrip",
                                                          loss_plot=True, filename_prefix="latents/sd15_trained"),
                               timeout=1800)
    trained = saved_latent(comfy_server, history)
    plots = [f for f in comfy_server.output_files(history) if f.suffix == ".png"]
    saved_plot = [f for f in plots if f.name.startswith("lora_lab_loss")]  # IMAGE output -> SaveImage
    preview = [f for f in plots if f.parent.name == "temp"]  # the node's own UI preview
    assert len(saved_plot) == 1 and saved_plot[0].stat().st_size > 1000, plots
    assert len(preview) == 1, plots
    saved = loras_dir / "sd15_roundtrip.safetensors"
    assert saved.is_file(), f"Save LoRA wrote nothing at {saved}: {list(loras_dir.iterdir())}"

    reloaded = saved_latent(comfy_server, comfy_server.run(checkpoint_sample_workflow(
        ckpt, lora=(saved.name, 1.0, 1.0), filename_prefix="latents/sd15_reloaded"), timeout=900))
    base = saved_latent(comfy_server, comfy_server.run(checkpoint_sample_workflow(
        ckpt, filename_prefix="latents/sd15_base"), timeout=900))

    log = comfy_server.log_since(mark)
    assert "lora key not loaded" not in log, log[-4000:]
    assert_latents_close(trained, reloaded, "trained MODEL vs saved file through stock LoraLoader")
    assert (trained - base).abs().max().item() > 1e-4, "the trained LoRA has no effect on sampling"

    with safe_open(str(saved), "pt") as handle:
        meta = handle.metadata()
        keys = list(handle.keys())
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4.0"
    assert meta["ss_steps"] == "3" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert all(k.startswith("lora_unet_") for k in keys)
    # SD1.5 is written with kohya's diffusers block names, like sd-scripts.
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_") for k in keys), keys[:5]
    # attention preset: q/k/v/out of 16 transformer blocks x 2 attentions, 3 tensors each
    assert len(keys) == 16 * 8 * 3


def test_save_never_overwrites_and_names_are_checked(comfy_server, sd15_checkpoint, dataset_dir, loras_dir):
    ckpt = sd15_checkpoint.name
    # Two different trainings saved under one name (an identical prompt would be served from ComfyUI's cache).
    for seed in (1, 2):
        comfy_server.run(train_only_workflow(ckpt, str(dataset_dir), dict(TRAIN, steps=1, seed=seed),
                                             save_name="twice"), timeout=1800)
    assert (loras_dir / "twice.safetensors").is_file()
    assert (loras_dir / "twice_00001.safetensors").is_file()

    from .comfy_server import PromptFailed

    for bad in ("../escape", "sub/dir"):
        try:
            comfy_server.run(train_only_workflow(ckpt, str(dataset_dir), dict(TRAIN, steps=1), save_name=bad),
                             timeout=1800)
        except PromptFailed as failure:
            assert "not allowed" in str(failure), str(failure)
        else:
            raise AssertionError(f"save name {bad!r} was accepted")
    assert not list(loras_dir.parent.glob("escape*"))


def test_cancel_leaves_a_loadable_partial_lora(comfy_server, sd15_checkpoint, dataset_dir, loras_dir):
    """POST /interrupt mid-training: the partial LoRA is in models/loras and the stock loader takes it."""
    from .comfy_server import PromptFailed, PromptLost

    ckpt = sd15_checkpoint.name
    mark = comfy_server.log_mark()
    prompt_id = comfy_server.queue_prompt(train_only_workflow(ckpt, str(dataset_dir),
                                                             dict(TRAIN, steps=500, output_name="cancelled"),
                                                             save_name="never_saved"))
    comfy_server.wait_for_log("LoRA Lab: step 1/500", mark, prompt_id, timeout=900)
    comfy_server.interrupt()
    try:
        comfy_server.wait(prompt_id, timeout=600)
    except PromptLost:
        raise
    except PromptFailed:
        pass  # an interrupted prompt ends as an error/interrupted entry: that is the point
    partial = sorted(loras_dir.glob("cancelled_step*.safetensors"))
    assert len(partial) == 1, f"expected one partial LoRA, found {list(loras_dir.iterdir())}"
    assert not (loras_dir / "never_saved.safetensors").exists()
    steps = int(partial[0].stem.split("_step")[1])
    assert 1 <= steps < 500
    with safe_open(str(partial[0]), "pt") as handle:
        assert handle.metadata()["ss_steps"] == str(steps)
    # the resumable state lies beside it, and ComfyUI's own LoRA list offers the LoRA, not the state
    assert partial[0].with_suffix(".state").is_file()
    offered = comfy_server.object_info("LoraLoader")["input"]["required"]["lora_name"]
    offered = offered[0] if isinstance(offered[0], list) else offered[1]["options"]
    assert partial[0].name in offered and not any(".state" in name for name in offered), offered

    mark = comfy_server.log_mark()
    latent = saved_latent(comfy_server, comfy_server.run(checkpoint_sample_workflow(
        ckpt, lora=(partial[0].name, 1.0, 1.0), filename_prefix="latents/after_cancel"), timeout=900))
    assert torch.isfinite(latent).all()
    assert "lora key not loaded" not in comfy_server.log_since(mark)
