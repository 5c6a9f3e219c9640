"""Preservation and several datasets through Train LoRA in a real ComfyUI (in this process, random full SD1.5).

Differential output preservation through ComfyUI's model: a first step with it is the first step without it, bit
for bit (its term and gradient are exactly 0 while the LoRA is), the LoRA-off target is the MODEL's own
prediction, and the LoRA's metadata records what ran. Combine Datasets with a regularisation dataset: the LoRA
lists each dataset, its share and the batches drawn from it. What cannot work is refused before any encoding.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from .comfy_inprocess import call_node
from .sample_data import make_image_folder

BASE = {
    "steps": 1, "learning_rate": 1e-3, "rank": 4, "alpha": 4.0, "target_preset": "attention", "batch_size": 1,
    "grad_accumulation": 1, "lr_schedule": "constant", "warmup_steps": 0, "timestep_sampling": "uniform",
    "precision": "fp32", "gradient_checkpointing": True, "seed": 0, "output_name": "preservation",
}
CAPTIONS = ["ohwx red square", "ohwx blue circle", "a green stripe", "ohwx yellow dot"]


def dataset(folder, trigger="ohwx", captions=CAPTIONS, count=4, seed=0):
    make_image_folder(folder, count=count, captions=captions, seed=seed)
    return call_node("LoraLabDataset", folder=str(folder), resolution=64, trigger_word=trigger, default_caption="")


def train(sd15, data, **inputs):
    model, clip, vae = sd15
    return call_node("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=data, **{**BASE, **inputs})[:4]  # MODEL, LORA, LOSS, CLIP (two more: the low-noise expert's)


def preservation(**inputs):
    options = dict(differential_output_preservation=True, class_word="dog", dop_multiplier=1.0, trigger_word="",
                   blank_prompt_preservation=False, blank_prompt_multiplier=1.0)
    return call_node("LoraLabPreservationOptions", **{**options, **inputs})[0]


def tensors(lora):
    return lora.state_dict()


def test_dop_first_step_is_the_plain_first_step_and_the_metadata_says_it_ran(sd15, tmp_path):
    data, _summary, _captions = dataset(tmp_path / "set")
    _, plain, plain_loss, _ = train(sd15, data)
    _, kept, kept_loss, _ = train(sd15, data, preservation=preservation(blank_prompt_preservation=True))
    assert kept_loss["loss"] == plain_loss["loss"]
    assert all(torch.equal(tensors(kept)[k], v) for k, v in tensors(plain).items())
    ran = json.loads(kept.metadata["lora_lab_preservation"])
    assert ran["dop"] == {"multiplier": 1.0, "class_word": "dog"} and ran["blank_prompt"] == {"multiplier": 1.0}
    assert "lora_lab_preservation" not in plain.metadata
    _, _, two, _ = train(sd15, data, steps=2, preservation=preservation())
    _, _, two_plain, _ = train(sd15, data, steps=2)
    assert two["loss"][0] == two_plain["loss"][0] and two["loss"][1] != two_plain["loss"][1]


def _backend_classes():
    """ComfyBackend in every copy of the pack (ComfyUI imports it under its folder's name, the tests as lora_lab)."""
    return [m.ComfyBackend for name, m in list(sys.modules.items())
            if name.endswith("nodes.comfy_backend") and hasattr(m, "ComfyBackend")]


def test_the_target_is_the_models_own_prediction(sd15, tmp_path, monkeypatch):
    import comfy.model_management

    targets = []
    for cls in _backend_classes():
        original = cls.denoise

        def denoise(self, x_t, sigma, conds, original=original):
            out = original(self, x_t, sigma, conds)
            if not torch.is_grad_enabled():
                targets.append((x_t.detach().clone(), sigma.clone(), list(conds), out.detach().clone()))
            return out

        monkeypatch.setattr(cls, "denoise", denoise)
    data, _, _ = dataset(tmp_path / "set")
    trained, lora, _, _ = train(sd15, data, steps=3, learning_rate=1e-2, preservation=preservation())
    assert len(targets) == 3
    monkeypatch.undo()
    model, _, _ = sd15
    from lora_lab.nodes.comfy_backend import ComfyBackend

    x_t, sigma, conds, target = targets[-1]  # made with the LoRA of step 2 attached, switched off
    with torch.no_grad():
        comfy.model_management.load_models_gpu([model])
        base = ComfyBackend(model.clone()).denoise(x_t, sigma, conds)  # the MODEL input, no LoRA anywhere
        comfy.model_management.load_models_gpu([trained])
        with_lora = ComfyBackend(trained).denoise(x_t, sigma, conds)
    comfy.model_management.load_models_gpu([model])
    error, effect = float((target - base).abs().max()), float((with_lora - base).abs().max())
    print(f"target vs the MODEL's prediction: {error:.3g}; the LoRA's effect on the same input: {effect:.3g}")
    assert effect > 0 and error <= 1e-3 * effect


def test_combined_datasets_with_regularisation_list_each_dataset_and_its_share(sd15, tmp_path):
    train_set, _, _ = dataset(tmp_path / "subject")
    reg_set, _, _ = dataset(tmp_path / "class", trigger="", captions=["a dog", "a dog on grass"], count=2, seed=5)
    (marked, reg_summary, _) = call_node("LoraLabRegularisationDataset", dataset=reg_set, target="base_prediction",
                                         loss_weight=0.5)
    (mix, summary, captions) = call_node("LoraLabCombineDatasets", dataset_1=train_set, weight_1=3.0, dataset_2=marked,
                                         weight_2=1.0, share_by="weight")
    print(summary)
    assert "subject: 75.0% of batches, training" in summary
    assert "class: 25.0% of batches, regularisation toward the base model's prediction, weight 0.5" in summary
    assert len(captions) == 6
    _, lora, loss, _ = train(sd15, mix, steps=4, preservation=preservation())
    listed = json.loads(lora.metadata["lora_lab_datasets"])
    assert [(d["name"], d["share"], d["role"]) for d in listed] == [("subject", 0.75, "training"),
                                                                     ("class", 0.25, "regularisation")]
    assert sum(d["batches_drawn"] for d in listed) == 4 and len(loss["loss"]) == 4
    assert lora.metadata["ss_num_train_images"] == "4" and lora.metadata["ss_num_reg_images"] == "2"
    ran = json.loads(lora.metadata["lora_lab_preservation"])
    assert ran["regularisation"] == [{"target": "base_prediction", "weight": 0.5, "samples": 2}] and "dop" in ran


def test_what_cannot_work_is_refused_before_encoding(sd15, tmp_path):
    data, _, captions = dataset(tmp_path / "set")
    model, clip, vae = sd15
    encoded = [clip.encode_from_tokens_scheduled(clip.tokenize(c)) for c in captions]
    with pytest.raises(Exception, match="needs Train LoRA's clip input and no conditioning list"):
        call_node("LoraLabTrain", model=[model], vae=[vae], dataset=[data], conditioning=encoded,
                  preservation=[preservation()], **{k: [v] for k, v in BASE.items()})
    te = call_node("LoraLabTextEncoderOptions", text_encoder_lr=1e-5, train_t5=False, targets="text_encoder")[0]
    with pytest.raises(Exception, match="cannot be combined with text-encoder training"):
        train(sd15, data, preservation=preservation(), text_encoder_options=te)
    with pytest.raises(Exception, match="Only regularisation datasets"):
        train(sd15, call_node("LoraLabRegularisationDataset", dataset=data, target="images", loss_weight=1.0)[0])
    no_trigger, _, _ = dataset(tmp_path / "plain", trigger="", captions=["a red square"])
    with pytest.raises(Exception, match="give the dataset a trigger_word"):
        train(sd15, no_trigger, preservation=preservation())
