"""Browser tests: Debian chromium + Python playwright against a real ComfyUI server started here.

They reuse the integration harness (tests/integration: comfy_server.start_server and its model fixtures) and
are skipped, with the reason, when ComfyUI (COMFYUI_PATH), playwright or chromium is absent:

    COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/venv/bin/python -m pytest tests/browser -rs

Screenshots and measurements go to out/browser/frontend-<version>/ (or $LORA_LAB_BROWSER_ARTIFACTS).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from integration.comfy_env import REPO_ROOT, why_unavailable
from integration.conftest import (comfy_cache, dataset_dir, loras_dir, mark_comfyui, model_file,  # noqa: F401
                                  running_server, sd15_checkpoint)

from .browser import ComfyPage, artifacts_dir, launch, why_no_browser

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    reason = why_unavailable() or why_no_browser()
    mark_comfyui(items, HERE, f"browser test: {reason}" if reason else None)


@pytest.fixture(scope="session")
def server_root(tmp_path_factory) -> Path:
    """Its own folder: the integration suite's server may run in the same session."""
    return tmp_path_factory.mktemp("browser_server")


@pytest.fixture(scope="session")
def example_models(server_root, sd15_checkpoint) -> dict[str, Path]:
    """The model files the example workflows name, so they open as on a user's machine that has them: the
    SD1.5 checkpoint is the random test SD1.5; the Flux files are empty stand-ins (those examples are never run).
    Likewise the images their LoadImage nodes name, in the server's input folder."""
    refs, images = {}, set()
    for path in (REPO_ROOT / "example_workflows").glob("*.json"):
        for node in json.loads(path.read_text())["nodes"]:
            for model in node["properties"].get("models", []):
                refs[model["name"]] = model["directory"]
            if node["type"] == "LoadImage":
                images.add(node["widgets_values"][0])
    for name in images:  # the picture an example edits (ComfyUI's own input/example.png on a user's machine)
        from PIL import Image

        (server_root / "input").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (128, 96, 64)).save(server_root / "input" / name)
    folders = {}
    for name, directory in refs.items():
        target = server_root / "example_models" / directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            if directory == "checkpoints":
                target.symlink_to(sd15_checkpoint)
            else:
                target.touch()
        folders[directory] = target.parent
    return folders


@pytest.fixture(scope="session")
def browser_server(server_root, comfy_cache, loras_dir, dataset_dir, example_models):
    """A real ComfyUI with LoRA Lab, the harness' test nodes and the browser tests' event node."""
    custom_nodes = {"lora_lab": REPO_ROOT, "lora_lab_test_nodes": REPO_ROOT / "tests" / "integration" / "test_nodes",
                    "lora_lab_browser_nodes": HERE / "test_nodes"}
    with running_server(server_root, comfy_cache, loras_dir, custom_nodes, example_models) as server:
        yield server


@pytest.fixture(scope="session")
def artifacts() -> Path:
    try:
        version = importlib.metadata.version("comfyui_frontend_package")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return artifacts_dir(f"frontend-{version}")


@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def comfy_page(chromium, browser_server, artifacts):
    context = chromium.new_context(viewport={"width": 1600, "height": 1000})
    page = ComfyPage(context.new_page(), browser_server, artifacts)
    try:
        page.open()
        yield page
    finally:
        context.close()
