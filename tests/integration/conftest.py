"""Fixtures for tests that run inside a real ComfyUI.

Every test under tests/integration is skipped, with the reason shown, when COMFYUI_PATH is unset or the
running python cannot run ComfyUI (e.g. plain python3 on CI). Run them with ComfyUI's own python, one
snapshot at a time (they start ComfyUI servers and load full-size SD1.5/SDXL models), with COMFYUI_PATH the
ComfyUI tree of the snapshot (January 2026: ComfyUI 0.8.0; August 2026: 0.33.0):

    COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python -m pytest tests/integration -q -rs

Add -m "not slow" to leave out the longest tests, or -k / a file path to run a few. Test models are built on
first use with the snapshot's own classes into <cache>/comfyui-<version>[-<commit>]/ (cache:
$LORA_LAB_TEST_CACHE or <tmp>/lora_lab_test_cache_<uid>), so the two snapshots never share a file; a build
is deterministic and is rebuilt only when comfy_models.BUILDER_VERSION changes. To build one ahead:
    COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python -m tests.integration.comfy_models ensure sd15
A prompt that fails, a server that dies or never starts, or a prompt ComfyUI lost fails the test with
ComfyUI's own error (the /history status messages) and the tail of the session's server.log; no wait is
unbounded.

Fixtures (session-scoped unless noted):
  comfy_cache        Path: this snapshot's model cache dir (comfy_models.default_cache_dir())
  sd15_checkpoint    Path to the random full SD1.5 checkpoint (built once, then reused from the cache)
  model_file         factory: model_file(kind) -> Path, any kind of comfy_models.MODEL_KINDS
  loras_dir          Path: a per-session folder registered as ComfyUI "loras"
  dataset_dir        Path: 4 captioned 64x64 PNGs, inside the server's input dir (subfolder "train_set")
  comfy_server       ComfyServer: one server per session with lora_lab + tests/integration/test_nodes loaded
  comfy              module: comfy.model_management, after ComfyUI was made importable in-process
  sd15               (module-scoped) (model, clip, vae) of the random SD1.5, loaded in-process with LoRA Lab's
                     nodes registered (a test module may define its own)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from .comfy_env import REPO_ROOT, ensure_lora_lab_importable, import_comfy, why_unavailable

HERE = Path(__file__).resolve().parent
MODEL_FOLDERS = ("checkpoints", "diffusion_models", "text_encoders", "vae")


def mark_comfyui(items, folder: Path, reason: str | None) -> None:
    """Mark the tests under `folder` comfyui, and skip them with `reason` when there is one."""
    for item in items:
        if folder in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.comfyui)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_collection_modifyitems(config, items):
    mark_comfyui(items, HERE, why_unavailable())


@pytest.fixture(scope="session")
def comfy_cache() -> Path:
    from .comfy_models import default_cache_dir

    cache = default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def model_file(comfy_cache):
    from .comfy_models import ensure_model

    def get(kind: str) -> Path:
        return ensure_model(kind, comfy_cache)

    return get


@pytest.fixture(scope="session")
def sd15_checkpoint(model_file) -> Path:
    return model_file("sd15")


@pytest.fixture(scope="session")
def server_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("comfy_server")


@pytest.fixture(scope="session")
def loras_dir(server_root) -> Path:
    path = server_root / "loras"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def dataset_dir(server_root) -> Path:
    from .sample_data import make_image_folder

    return make_image_folder(server_root / "input" / "train_set")


@contextmanager
def running_server(server_root: Path, comfy_cache: Path, loras_dir: Path, custom_nodes: dict[str, Path],
                   more_model_dirs: dict[str, Path] | None = None):
    """A real ComfyUI (main.py --cpu) with the cached test models (and more_model_dirs) and loras_dir as its
    model folders, stopped on exit; its log is server_root/server.log."""
    from .comfy_server import start_server

    model_dirs = {folder: [comfy_cache / folder] for folder in MODEL_FOLDERS}
    for dirs in model_dirs.values():
        dirs[0].mkdir(parents=True, exist_ok=True)
    for folder, path in (more_model_dirs or {}).items():
        model_dirs.setdefault(folder, []).append(path)
    model_dirs["loras"] = [loras_dir]
    server = start_server(server_root, model_dirs, custom_nodes)
    try:
        yield server
    finally:
        server.stop()
        print(f"\nComfyUI server log: {server.log_path}")


@pytest.fixture(scope="session")
def comfy_server(server_root, comfy_cache, loras_dir, dataset_dir):
    """A real ComfyUI (main.py --cpu) for the whole session; its log is server_root/server.log."""
    custom_nodes = {"lora_lab": REPO_ROOT, "lora_lab_test_nodes": HERE / "test_nodes"}
    datasets = {"datasets": server_root / "datasets"}  # a datasets folder, as extra_model_paths.yaml may add
    with running_server(server_root, comfy_cache, loras_dir, custom_nodes, datasets) as server:
        yield server


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """In-process ComfyUI (args.cpu=True before any comfy import); `import nodes, folder_paths` work after it."""
    mm = import_comfy()
    ensure_lora_lab_importable(tmp_path_factory.mktemp("pkg_link"))
    from .comfy_inprocess import use_input_and_user_dirs

    use_input_and_user_dirs(tmp_path_factory.getbasetemp())  # every tmp_path is then inside input/ and user/
    return mm


@pytest.fixture(scope="module")
def sd15(comfy, sd15_checkpoint):
    from .comfy_inprocess import load_checkpoint, register_lora_lab_nodes

    register_lora_lab_nodes()
    return load_checkpoint(sd15_checkpoint)


def pytest_report_header(config):
    reason = why_unavailable()
    return f"ComfyUI: {os.environ.get('COMFYUI_PATH')}" if not reason else f"ComfyUI: unavailable ({reason[:80]})"
