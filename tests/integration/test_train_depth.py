"""The training options in a real ComfyUI, in this process, on the random full SD1.5: every optimizer learns; LoHa/LoKr/DoRA
files through the core LoraLoader equal the in-graph MODEL; a text-encoder LoRA through strength_clip equals
the in-graph CLIP; save_every + resume_from, cancel + resume and crash + resume are byte-exact; previews change no byte; bad
input is named. Optional optimizer packages come from PYTHONPATH (never installed into ComfyUI's venv)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from .comfy_inprocess import call_node
from .test_train_inprocess import BASE, _dataset, _eval_loss

PACKAGES = {"adamw8bit": "bitsandbytes", "came": "pytorch_optimizer", "lion": "pytorch_optimizer",
            "prodigy": "prodigyopt", "adamw_schedulefree": "schedulefree", "adafactor": "transformers"}
OPTIMIZER_RUNS = {  # (learning rate, extra settings) that move a rank-8 LoRA within 12 steps
    "adamw": (2e-3, ""), "adamw8bit": (2e-3, ""), "adafactor": (2e-3, ""), "came": (2e-3, ""),
    "prodigy": (1.0, "d0=1e-4"), "lion": (3e-4, ""), "adamw_schedulefree": (2e-3, ""),
}


@pytest.fixture
def loras(tmp_path):
    import folder_paths

    folder_paths.add_model_folder_path("loras", str(tmp_path), is_default=True)
    return tmp_path


def _train(sd15, dataset, **inputs):
    model, clip, vae = sd15
    return call_node("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=dataset, **dict(BASE, **inputs))[:4]  # MODEL, LORA, LOSS, CLIP (two more outputs: the low-noise expert's)


def _options(node, **inputs):
    (value,) = call_node(node, **inputs)
    return value


def _optimizer_options(settings=""):
    return _options("LoraLabOptimizerOptions", weight_decay=-1.0, max_grad_norm=1.0, lr_cycles=1, ema_decay=0.0,
                    settings=settings)


def _file_bytes(lora):
    from lora_lab.lora_core.files.safetensors_io import safetensors_bytes

    return safetensors_bytes(lora.state_dict(), lora.metadata)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", list(OPTIMIZER_RUNS))
def test_each_optimizer_learns_on_random_sd15(sd15, dataset_dir, optimizer, capsys):
    package = PACKAGES.get(optimizer)
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not importable here (put it on PYTHONPATH)")
    model, clip, vae = sd15
    dataset = _dataset(dataset_dir)
    lr, settings = OPTIMIZER_RUNS[optimizer]
    before = _eval_loss(model, dataset, vae, clip)
    trained, _lora, loss, _clip = _train(sd15, dataset, steps=12, learning_rate=lr, rank=8, alpha=8.0,
                                         target_preset="all_linear", seed=1, optimizer=optimizer,
                                         optimizer_options=_optimizer_options(settings))
    after = _eval_loss(trained, dataset, vae, clip)
    _eval_loss(model, dataset, vae, clip)
    with capsys.disabled():
        print(f"\n{optimizer}: fixed-noise eval loss {before:.4f} -> {after:.4f} ({100 * (after - before) / before:+.1f}%)")
    assert after < 0.95 * before, f"{optimizer}: eval loss did not drop: {before} -> {after}"


def _apply_model(patcher, seed=3):
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    g = torch.Generator().manual_seed(seed)
    x, cond = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        return patcher.model.apply_model(x, torch.tensor([3.0]), c_crossattn=cond)


@pytest.mark.parametrize("algorithm", ["loha", "lokr", "dora"])
def test_saved_file_through_core_loraloader_equals_in_graph_model(sd15, dataset_dir, loras, algorithm):
    model, clip, _vae = sd15
    trained, lora, _loss, _clip = _train(sd15, _dataset(dataset_dir), steps=2, learning_rate=5e-3, algorithm=algorithm,
                                         target_preset="attention_mlp")
    (path,) = call_node("LoraLabSaveLora", lora=lora, name=f"algo_{algorithm}")
    keys = set(lora.state_dict())
    marker = {"loha": ".hada_w1_a", "lokr": ".lokr_w1", "dora": ".dora_scale"}[algorithm]
    assert any(k.endswith(marker) for k in keys)
    loaded, _ = call_node("LoraLoader", model=model, clip=clip, lora_name=f"algo_{algorithm}.safetensors",
                          strength_model=1.0, strength_clip=1.0)
    base = _apply_model(model)
    in_graph = _apply_model(trained)
    from_file = _apply_model(loaded)
    _apply_model(model)
    assert (in_graph - base).abs().max() > 0, "two steps changed nothing"
    torch.testing.assert_close(from_file, in_graph, rtol=0, atol=0)


def test_text_encoder_lora_strength_clip_matches_in_graph_clip(sd15, dataset_dir, loras):
    model, clip, _vae = sd15
    te = _options("LoraLabTextEncoderOptions", text_encoder_lr=5e-3, train_t5=False, targets="text_encoder")
    _trained, lora, _loss, trained_clip = _train(sd15, _dataset(dataset_dir), steps=2, learning_rate=5e-3,
                                                  text_encoder_options=te)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in lora.state_dict())
    call_node("LoraLabSaveLora", lora=lora, name="te_lora")
    tokens = clip.tokenize("a photo of a red square")

    def encode(c):
        with torch.no_grad():
            return c.encode_from_tokens_scheduled(tokens)[0][0].clone()

    results = {}
    for strength in (0.0, 1.0):
        _m, loaded_clip = call_node("LoraLoader", model=model, clip=clip, lora_name="te_lora.safetensors",
                                    strength_model=1.0, strength_clip=strength)
        results[strength] = encode(loaded_clip)
    base, in_graph = encode(clip), encode(trained_clip)
    assert (in_graph - base).abs().max() > 0, "the text-encoder LoRA changed nothing"
    torch.testing.assert_close(results[0.0], base, rtol=0, atol=0)
    torch.testing.assert_close(results[1.0], in_graph, rtol=0, atol=0)


def test_save_every_then_resume_is_byte_identical(sd15, dataset_dir, loras):
    dataset = _dataset(dataset_dir)
    common = dict(steps=6, grad_accumulation=2, learning_rate=2e-3, lr_schedule="cosine", warmup_steps=1,
                  algorithm_options=_options("LoraLabAlgorithmOptions", lokr_factor=-1, lokr_decompose_both=False,
                                             dora_axis="input", dropout=0.1))
    _m, straight, loss, _c = _train(sd15, dataset, save_every=3, output_name="periodic", **common)
    step3 = loras / "periodic_step00003.safetensors"
    assert step3.exists() and (loras / "periodic_step00003.state").exists()
    _m, resumed, loss2, _c = _train(sd15, dataset, resume_from="periodic_step00003.safetensors",
                                    output_name="periodic", **common)
    assert loss2["loss"] == loss["loss"]
    assert _file_bytes(resumed) == _file_bytes(straight)


def test_cancel_at_step_three_then_resume_is_byte_identical(sd15, dataset_dir, loras, monkeypatch):
    import comfy.model_management
    import comfy.utils

    dataset = _dataset(dataset_dir)
    common = dict(steps=5, learning_rate=2e-3, seed=4, output_name="cancelled")
    _m, straight, _l, _c = _train(sd15, dataset, **common)
    update = comfy.utils.ProgressBar.update_absolute

    def cancel_after_step_three(bar, value, total=None, preview=None):  # the user presses cancel as step 3 ends
        update(bar, value, total, preview)
        if value == 3:
            comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", cancel_after_step_three)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _train(sd15, dataset, **common)
    finally:
        monkeypatch.undo()
        comfy.model_management.interrupt_current_processing(False)
    assert (loras / "cancelled_step00003.state").exists()
    _m, resumed, _l, _c = _train(sd15, dataset, resume_from=str(loras / "cancelled_step00003.state"),
                                 **common)
    assert _file_bytes(resumed) == _file_bytes(straight)


def test_a_crash_mid_run_saves_a_loadable_lora_and_state_that_resume_exactly(sd15, dataset_dir, loras, monkeypatch):
    """A bug striking inside step 3's forward: Train LoRA raises TrainingCrashed naming the step-2 LoRA and its
    state; ComfyUI's loader maps every key of that file, and resuming from it gives the uninterrupted bytes."""
    import comfy.lora
    import comfy.utils

    model, _clip, _vae = sd15
    dataset = _dataset(dataset_dir)
    common = dict(steps=4, learning_rate=2e-3, seed=6, output_name="crashed")
    _m, straight, _l, _c = _train(sd15, dataset, **common)
    update, armed = comfy.utils.ProgressBar.update_absolute, {"on": False}

    def arm_after_step_two(bar, value, total=None, preview=None):
        update(bar, value, total, preview)
        armed["on"] = armed["on"] or value == 2

    def bug(module, args):
        if armed["on"]:
            raise KeyError("simulated bug in a custom node's model patch")

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", arm_after_step_two)
    handle = model.model.diffusion_model.register_forward_pre_hook(bug)
    try:
        with pytest.raises(Exception) as caught:
            _train(sd15, dataset, **common)
    finally:
        handle.remove()
        monkeypatch.undo()
    message = str(caught.value)
    partial, state = loras / "crashed_step00002.safetensors", loras / "crashed_step00002.state"
    assert type(caught.value).__name__ == "TrainingCrashed", message
    assert "during step 3: KeyError" in message and str(partial) in message and str(state) in message
    sd = comfy.utils.load_torch_file(str(partial))
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    assert len(comfy.lora.load_lora(sd, key_map)) * 3 == len(sd)  # every module (down, up, alpha) mapped
    _m, resumed, _l, _c = _train(sd15, dataset, resume_from=str(partial), **common)
    assert _file_bytes(resumed) == _file_bytes(straight)


def test_previews_change_no_byte_and_write_images(sd15, dataset_dir, loras):
    import folder_paths

    dataset = _dataset(dataset_dir)
    previews = _options("LoraLabPreviewOptions", every_n_steps=2, prompts="a red square\na blue circle",
                        negative="", seed=5, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal",
                        width=64, height=64)
    _m, plain, _l, _c = _train(sd15, dataset, steps=4, output_name="previewed")
    _m, with_previews, _l, _c = _train(sd15, dataset, steps=4, output_name="previewed", previews=previews)
    assert _file_bytes(with_previews) == _file_bytes(plain)
    out = folder_paths.get_output_directory()
    from pathlib import Path

    written = sorted(p.name for p in (Path(out) / "lora_lab_previews").glob("previewed_step*.png"))
    assert {"previewed_step00002_0.png", "previewed_step00002_1.png", "previewed_step00004_0.png",
            "previewed_step00004_1.png"} <= set(written)


def test_bad_input_is_named(sd15, dataset_dir, loras, tmp_path, monkeypatch):
    import sys

    from PIL import Image

    dataset = _dataset(dataset_dir)
    _train(sd15, dataset, steps=2, save_every=1, output_name="other_data")
    other = tmp_path / "other_images"
    other.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 0, 0)).save(other / f"{i}.png")
        (other / f"{i}.txt").write_text(f"square {i}")
    with pytest.raises(Exception, match=r"cannot resume .*dataset: 4 samples in the state, 3 now"):
        _train(sd15, _dataset(other), steps=3, resume_from="other_data_step00001.safetensors")
    with pytest.raises(Exception, match=r"cannot resume .*learning_rate: 0\.001 in the state, 0\.002 now"):
        _train(sd15, dataset, steps=3, learning_rate=2e-3, resume_from="other_data_step00001.safetensors")
    with pytest.raises(Exception, match=r"no training state beside"):
        (loras / "lonely.safetensors").write_bytes((loras / "other_data_step00001.safetensors").read_bytes())
        _train(sd15, dataset, steps=3, resume_from="lonely.safetensors")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(Exception, match=r"needs the Python package 'bitsandbytes'.*pip install"):
        _train(sd15, dataset, steps=1, optimizer="adamw8bit")
    algo = _options("LoraLabAlgorithmOptions", lokr_factor=4096, lokr_decompose_both=False, dora_axis="input", dropout=0.0)
    with pytest.raises(Exception, match=r"LoKr factor 4096 is larger than layer .*\(out=\d+, in=\d+\)"):
        _train(sd15, dataset, steps=1, algorithm="lokr", algorithm_options=algo)
