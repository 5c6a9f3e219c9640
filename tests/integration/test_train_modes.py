"""Train LoRA's checkpointing modes and compile option in a real ComfyUI, in this process, on the random full SD1.5:
the true/false of older workflows still validate and mean full/off; partial, full and compile give the LoRA of the
plain run and the file says which ran; with compile, cancel + resume and previews leave the bytes as they are.

Compiled here with aot_eager (TorchDynamo and AOTAutograd as with inductor, no C++ generated: the full-size
UNet would take minutes per shape to compile with inductor on a CPU); test_checkpointing_comfy.py compiles
ComfyUI's block classes with inductor."""

from __future__ import annotations

import pytest
import torch

from .test_train_depth import _file_bytes, _optimizer_options, _options, _train, loras  # noqa: F401  (fixture)
from .test_train_inprocess import _dataset


@pytest.fixture
def aot_eager(monkeypatch):
    from lora_lab.lora_core.training import compiled_units

    monkeypatch.setattr(compiled_units, "DEFAULT_BACKEND", "aot_eager")


def test_old_booleans_and_the_modes_validate(comfy):
    from lora_lab.nodes.train_node import TrainLora

    for value in (True, False, "off", "partial", "full"):
        assert TrainLora.validate_inputs(gradient_checkpointing=[value]) is True
    message = TrainLora.validate_inputs(gradient_checkpointing=["sometimes"])
    assert isinstance(message, str) and "off, partial, full" in message


def _lora_tensors(lora) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in lora.state_dict().items()}


def test_each_mode_and_compile_give_the_plain_lora_and_say_so(sd15, dataset_dir, aot_eager):
    """AdamW with eps=1 (its update linear in the gradient), so the LoRAs differ by what the gradients differ:
    float32 rounding (recomputation and compiled kernels reassociate sums)."""
    dataset = _dataset(dataset_dir)
    common = dict(steps=2, learning_rate=1e-2, optimizer_options=_optimizer_options("eps=1.0"))
    runs = {}
    for name, inputs in {"off": {"gradient_checkpointing": False}, "full": {"gradient_checkpointing": True},
                         "partial": {"gradient_checkpointing": "partial"},
                         "partial+compile": {"gradient_checkpointing": "partial", "compile": True}}.items():
        _m, lora, _l, _c = _train(sd15, dataset, **common, **inputs)
        runs[name] = lora
    plain = _lora_tensors(runs["off"])
    for name, lora in runs.items():
        got = _lora_tensors(lora)
        for key, want in plain.items():
            torch.testing.assert_close(got[key], want, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
    meta = {name: lora.metadata for name, lora in runs.items()}
    assert meta["off"]["lora_lab_gradient_checkpointing"] == "off" and meta["off"]["ss_gradient_checkpointing"] == "False"
    assert meta["full"]["lora_lab_gradient_checkpointing"].startswith("full (")
    assert meta["partial"]["lora_lab_gradient_checkpointing"].startswith("partial (")
    assert all(meta[n]["ss_gradient_checkpointing"] == "True" for n in ("full", "partial", "partial+compile"))
    assert "lora_lab_compile" not in meta["partial"] or meta["partial"]["lora_lab_compile"] == "off"
    assert meta["partial+compile"]["lora_lab_compile"] == "on"  # no counts or times: same settings, same bytes


def test_compiled_run_with_previews_changes_no_byte(sd15, dataset_dir, loras, aot_eager):  # noqa: F811
    """Previews between compiled steps run the units eagerly and must leave the LoRA as it is without them."""
    dataset = _dataset(dataset_dir)
    previews = _options("LoraLabPreviewOptions", every_n_steps=2, prompts="a red square", negative="", seed=5,
                        steps=1, cfg=1.0, sampler_name="euler", scheduler="normal", width=64, height=64)
    common = dict(steps=4, learning_rate=2e-3, seed=4, output_name="compiled", gradient_checkpointing="partial",
                  compile=True)
    _m, straight, _l, _c = _train(sd15, dataset, **common)
    _m, previewed, _l, _c = _train(sd15, dataset, previews=previews, **common)
    assert _file_bytes(previewed) == _file_bytes(straight)


def test_compiled_run_cancelled_then_resumed_is_byte_identical(sd15, dataset_dir, loras, aot_eager, monkeypatch):  # noqa: F811
    import comfy.model_management
    import comfy.utils

    dataset = _dataset(dataset_dir)
    common = dict(steps=4, learning_rate=2e-3, seed=4, output_name="compiled", gradient_checkpointing="partial",
                  compile=True)
    _m, straight, _l, _c = _train(sd15, dataset, **common)
    update = comfy.utils.ProgressBar.update_absolute

    def cancel_after_step_two(bar, value, total=None, preview=None):
        update(bar, value, total, preview)
        if value == 2:
            comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", cancel_after_step_two)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _train(sd15, dataset, **common)
    finally:
        monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", update)
        comfy.model_management.interrupt_current_processing(False)
    assert (loras / "compiled_step00002.state").exists()
    _m, resumed, _l, _c = _train(sd15, dataset, resume_from=str(loras / "compiled_step00002.state"), **common)
    assert _file_bytes(resumed) == _file_bytes(straight)
