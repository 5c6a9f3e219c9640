"""The preservation, dataset-mixing and captioning nodes in real server workflows (API-format graphs over HTTP).

  training: two Load Training Images, Regularisation Dataset, Combine Datasets, LoRA Lab Preservation,
            Train LoRA, Save LoRA: the saved file's metadata lists both datasets and what preservation ran
  Save Captions: a dataset's captions output (a STRING list) written beside another folder's images, once
  Caption Images: where ComfyUI has text generation, a random small Qwen3-VL (test node) captions a folder and
            Save Captions writes its list by filename into a copy; where it has none, the prompt fails saying so
"""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors import safe_open

from .comfy_server import PromptFailed
from .sample_data import make_image_folder
from .test_caption_nodes import CAPTION, HAS_TEXT_GENERATION, pictures, sidecars
from .workflows import DEFAULT_DATASET_INPUTS, DEFAULT_TRAIN_INPUTS, Graph

PRESERVATION = dict(differential_output_preservation=True, class_word="shape", dop_multiplier=1.0, trigger_word="",
                    blank_prompt_preservation=True, blank_prompt_multiplier=0.5)
SAVE_INPUTS = dict(trigger_word="", caption_template="", overwrite=False, caption_extension=".txt")


def training_workflow(ckpt: str, subject: str, reg: str, name: str) -> dict:
    g = Graph()
    ckpt_node = g.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    model, clip, vae = ckpt_node[0], ckpt_node[1], ckpt_node[2]
    subject_set = g.add("LoraLabDataset", folder=subject, **dict(DEFAULT_DATASET_INPUTS, trigger_word="ohwx"))
    reg_set = g.add("LoraLabDataset", folder=reg, **DEFAULT_DATASET_INPUTS)
    marked = g.add("LoraLabRegularisationDataset", dataset=reg_set[0], target="images", loss_weight=0.5)
    mix = g.add("LoraLabCombineDatasets", dataset_1=subject_set[0], weight_1=1.0, dataset_2=marked[0], weight_2=1.0,
                share_by="repeats")
    kept = g.add("LoraLabPreservationOptions", **PRESERVATION)
    train = g.add("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=mix[0], preservation=kept[0],
                  **dict(DEFAULT_TRAIN_INPUTS, steps=2, seed=3))
    g.add("LoraLabSaveLora", lora=train[1], name=name)
    return g.api()


def test_combined_regularised_preserved_training_in_a_server(comfy_server, sd15_checkpoint, dataset_dir, loras_dir):
    reg = make_image_folder(comfy_server.input_dir / "reg_set", count=2, seed=9, captions=["a shape", "a plain shape"])
    comfy_server.run(training_workflow(sd15_checkpoint.name, str(dataset_dir), str(reg), "server_preserved"),
                     timeout=1800)
    with safe_open(str(loras_dir / "server_preserved.safetensors"), framework="pt") as f:
        meta = f.metadata()
    listed = json.loads(meta["lora_lab_datasets"])
    assert [(d["name"], d["role"], round(d["share"], 4)) for d in listed] == [
        ("train_set", "training", round(4 / 6, 4)), ("reg_set", "regularisation", round(2 / 6, 4))]
    assert sum(d["batches_drawn"] for d in listed) == 2
    ran = json.loads(meta["lora_lab_preservation"])
    assert ran["dop"]["class_word"] == "shape" and ran["blank_prompt"] == {"multiplier": 0.5}
    assert ran["regularisation"] == [{"target": "images", "weight": 0.5, "samples": 2}]
    assert meta["ss_prior_loss_weight"] == "0.5" and meta["ss_num_reg_images"] == "2"


def test_save_captions_writes_a_string_list_once(comfy_server, dataset_dir):
    target = comfy_server.input_dir / "to_caption"
    target.mkdir(exist_ok=True)
    for image in dataset_dir.glob("*.png"):
        shutil.copy(image, target / image.name)
    g = Graph()
    data = g.add("LoraLabDataset", folder=str(dataset_dir), **DEFAULT_DATASET_INPUTS)
    g.add("LoraLabSaveCaptions", captions=data[2], folder=str(target), **SAVE_INPUTS)
    history = comfy_server.run(g.api(), timeout=600)
    written = sidecars(target)
    expected = sorted(p.read_text() for p in dataset_dir.glob("*.txt"))
    assert len(written) == 4 and sorted(written.values()) == expected
    report = json.dumps(history["outputs"])
    assert "wrote 4 new captions" in report
    (target / "img_00.txt").write_text("mine")
    history = comfy_server.run(g.api(), timeout=600)  # the folder changed, so the node runs again: keeps all
    assert "kept 4 existing captions" in json.dumps(history["outputs"]) and (target / "img_00.txt").read_text() == "mine"


@pytest.mark.skipif(not HAS_TEXT_GENERATION, reason="this ComfyUI has no TextGenerate")
def test_caption_images_then_save_captions_by_filename_in_a_server(comfy_server):
    folder = pictures(comfy_server.input_dir / "vl_set")
    copy = pictures(comfy_server.input_dir / "vl_copy", captioned=())
    g = Graph()
    clip = g.add("LoraLabTestVisionClip", seed=1234)
    captioned = g.add("LoraLabCaptionImages", clip=clip[0], folder=str(folder), **CAPTION)
    g.add("LoraLabSaveCaptions", captions=captioned[1], folder=str(copy), filenames=captioned[2], **SAVE_INPUTS)
    history = comfy_server.run(g.api(), timeout=1200)
    written = sidecars(folder)
    assert written["p0.txt"] == "my own caption" and set(written) == {"p0.txt", "p1.txt", "p2.txt"}
    assert sidecars(copy) == {"p1.txt": written["p1.txt"], "p2.txt": written["p2.txt"]}
    assert "wrote 2 new captions, kept 1 existing caption" in json.dumps(history["outputs"])


@pytest.mark.skipif(HAS_TEXT_GENERATION, reason="this ComfyUI has TextGenerate")
def test_caption_images_without_text_generation_fails_saying_so(comfy_server, sd15_checkpoint):
    folder = pictures(comfy_server.input_dir / "no_vl_set")
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=sd15_checkpoint.name)
    g.add("LoraLabCaptionImages", clip=ckpt[1], folder=str(folder), **CAPTION)
    with pytest.raises(PromptFailed, match=r"needs ComfyUI's text generation \(the 'Generate Text' node"):
        comfy_server.run(g.api(), timeout=600)
    assert sidecars(folder) == {"p0.txt": "my own caption"}
