"""Every path a prompt names stays inside ComfyUI's folders, tried through real server prompts: dataset folders
outside input/ (absolute, via '..'), cache folders outside the user directory, resume_from outside
models/loras and Encoding Cache -> clear on folders holding files the cache did not write are refused with an
error naming the input, and the files outside are untouched (sizes and times compared before and after).
Also: the dataset dropdown, and a server with the pack installed twice."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from .comfy_server import PromptFailed
from .conftest import running_server
from .comfy_env import REPO_ROOT
from .sample_data import make_image_folder
from .workflows import Graph, train_only_workflow

TRAIN = {"steps": 1, "rank": 2, "alpha": 2.0}


def listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def refused(server, workflow: dict, node_input: str, words: str) -> str:
    """The prompt is refused at validation; the error names the input and says why (ComfyUI's node_errors)."""
    with pytest.raises(PromptFailed) as failure:
        server.queue_prompt(workflow)
    text = str(failure.value)
    assert node_input in text and words in text, text[:3000]
    return text


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A folder next to the server's tree, outside input/, user/ and models/loras, with a dataset, a foreign
    cache-shaped file and a training state in it."""
    root = tmp_path_factory.mktemp("outside")
    make_image_folder(root / "data", count=2, size=64)
    shard = root / "cache" / "latents" / "cd"
    shard.mkdir(parents=True)
    save_file({"x": torch.zeros(2)}, str(shard / "cd_foreign.safetensors"))
    (root / "run.state").write_bytes(b"not yours")
    return root


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_dataset_folder_outside_input_is_refused(comfy_server, sd15_checkpoint, outside, how):
    before = listing(outside)
    folder = str(outside / "data") if how == "absolute" else os.path.relpath(outside / "data", comfy_server.input_dir)
    assert how == "absolute" or folder.startswith("..")
    text = refused(comfy_server, train_only_workflow(sd15_checkpoint.name, folder, TRAIN), "folder",
                   "is outside the folders datasets may be read from")
    assert "input directory" in text
    assert listing(outside) == before


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_cache_folder_outside_the_user_directory_is_refused(comfy_server, sd15_checkpoint, dataset_dir, outside, how):
    target = outside / f"new_cache_{how}"
    before = listing(outside)
    cache = str(target) if how == "absolute" else os.path.relpath(target, comfy_server.root / "user")
    workflow = train_only_workflow(sd15_checkpoint.name, str(dataset_dir), TRAIN, dataset_inputs={"cache_folder": cache})
    refused(comfy_server, workflow, "cache_folder", "is not a folder inside ComfyUI's user directory")
    assert listing(outside) == before and not target.exists()


def test_resume_from_outside_models_loras_is_refused(comfy_server, sd15_checkpoint, dataset_dir, loras_dir, outside):
    before = listing(outside)
    for name in (str(outside / "run.state"), os.path.relpath(outside / "run.state", loras_dir)):
        workflow = train_only_workflow(sd15_checkpoint.name, str(dataset_dir), dict(TRAIN, resume_from=name))
        refused(comfy_server, workflow, "resume_from", "is outside models/loras")
    assert listing(outside) == before


def _clear(cache_folder: str) -> dict:
    g = Graph()
    g.add("LoraLabCache", cache_folder=cache_folder, action="clear")
    return g.api()


def test_cache_clear_deletes_only_what_the_cache_wrote(comfy_server, sd15_checkpoint, outside):
    user = comfy_server.root / "user"
    # outside the user directory: refused before anything runs
    before = listing(outside)
    refused(comfy_server, _clear(str(outside / "cache")), "cache_folder",
            "is not a folder inside ComfyUI's user directory")
    assert listing(outside) == before

    # inside it, a folder the cache never made (no tag): the node fails naming cache_folder, deletes nothing
    foreign = user / "not_a_cache"
    shutil.copytree(outside / "cache", foreign)
    kept = listing(foreign)
    with pytest.raises(PromptFailed, match="cache_folder 'not_a_cache'.*not a LoRA Lab encoding cache"):
        comfy_server.run(_clear("not_a_cache"), timeout=120)
    assert listing(foreign) == kept

    # a real cache with a foreign file where its entries go: clear takes the cache's own files only
    fresh = make_image_folder(comfy_server.input_dir / "for_the_cache", count=2, size=64, seed=7)  # not in memory yet
    comfy_server.run(train_only_workflow(sd15_checkpoint.name, fresh.name, TRAIN,
                                         dataset_inputs={"cache_folder": "real_cache"}), timeout=1800)
    cache = user / "real_cache"
    own = [p for p in cache.rglob("*.safetensors")]
    assert own, listing(cache)
    planted = own[0].parent / f"{own[0].parent.name}_foreign.safetensors"
    shutil.copyfile(outside / "cache" / "latents" / "cd" / "cd_foreign.safetensors", planted)
    planted_before = (planted.stat().st_size, planted.stat().st_mtime_ns)
    comfy_server.run(_clear("real_cache"), timeout=120)
    assert [p for p in cache.rglob("*.safetensors")] == [planted]
    assert (planted.stat().st_size, planted.stat().st_mtime_ns) == planted_before


def _options(server, node: str, name: str) -> list[str]:
    spec = server.object_info(node)["input"]["required"][name]
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def test_dataset_dropdown_lists_input_and_datasets_folders(comfy_server, sd15_checkpoint, dataset_dir):
    datasets = comfy_server.root / "datasets"  # listed to ComfyUI in extra_model_paths.yaml (conftest)
    make_image_folder(datasets / "portraits", count=2, size=64)
    for node in ("LoraLabDataset", "LoraLabVideoDataset"):
        options = _options(comfy_server, node, "folder")
        assert dataset_dir.name in options and "portraits [datasets]" in options, options


def test_a_dataset_in_a_datasets_folder_trains(comfy_server, sd15_checkpoint):
    make_image_folder(comfy_server.root / "datasets" / "pets", count=2, size=64)
    comfy_server.run(train_only_workflow(sd15_checkpoint.name, "pets [datasets]", TRAIN, save_name="from_datasets"),
                     timeout=1800)


def test_two_copies_of_the_pack_start_and_train(tmp_path, comfy_cache, sd15_checkpoint):
    """A manual clone beside a ComfyUI-Manager install: the server starts, names both folders, and trains."""
    copy = tmp_path / "copies" / "comfyui-lora-lab"
    shutil.copytree(REPO_ROOT, copy, ignore=shutil.ignore_patterns(".git", ".venv*", "tests", "bench", "out",
                                                                   "__pycache__", "*.egg-info"))
    root = tmp_path / "server"
    loras = root / "loras"
    loras.mkdir(parents=True)
    make_image_folder(root / "input" / "train_set", count=2, size=64)
    with running_server(root, comfy_cache, loras, {"lora_lab": REPO_ROOT, "lora-lab-manager": copy}) as server:
        assert server.custom_node_import_failures() == []
        server.run(train_only_workflow(sd15_checkpoint.name, "train_set", TRAIN, save_name="twice_installed"),
                   timeout=1800)
        log = server.log_text()
    assert "LoRA Lab is installed twice" in log, log[-3000:]
    warning = next(line for line in log.splitlines() if "LoRA Lab is installed twice" in line)
    assert str(root / "custom_nodes" / "lora_lab") in warning and str(root / "custom_nodes" / "lora-lab-manager") in warning
    assert (loras / "twice_installed.safetensors").is_file()
