"""Where the real ComfyUI is, and how to import it in this process.

Everything ComfyUI-specific in the integration harness starts here. Nothing in this file imports
``comfy`` at module import time, so pytest can collect ``tests/integration`` on a machine without
ComfyUI and skip with a clear reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SKIP_REASON = (
    "needs a real ComfyUI: set COMFYUI_PATH to a ComfyUI source tree and run pytest with that "
    "ComfyUI's python (e.g. COMFYUI_PATH=$COMFYUI_PATH $COMFYUI_PATH/.venv/bin/python -m pytest tests/integration; see tests/integration/conftest.py)"
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def comfyui_path() -> Path | None:
    """The ComfyUI tree named by $COMFYUI_PATH, or None when unset or not a ComfyUI checkout."""
    raw = os.environ.get("COMFYUI_PATH", "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        return None
    return path


def why_unavailable() -> str | None:
    """A human reason why ComfyUI cannot be used here, or None when it can."""
    raw = os.environ.get("COMFYUI_PATH", "").strip()
    if not raw:
        return "COMFYUI_PATH is not set; " + SKIP_REASON
    path = comfyui_path()
    if path is None:
        return f"COMFYUI_PATH={raw!r} is not a ComfyUI tree (no main.py / comfy/); " + SKIP_REASON
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401  ComfyUI imports it at start-up
    except ImportError as exc:
        return f"this python ({sys.executable}) cannot run ComfyUI ({exc}); " + SKIP_REASON
    return None


def comfy_python() -> str:
    """The interpreter to launch ComfyUI subprocesses with: ComfyUI's own venv when present."""
    path = comfyui_path()
    if path is not None:
        venv_python = path / ".venv" / "bin" / "python"
        if venv_python.is_file():
            return str(venv_python)
    return sys.executable


def import_comfy(cpu: bool = True):
    """Make ComfyUI importable in this process and return ``comfy.model_management``.

    ``args.cpu`` must be set before any other comfy import, or model_management probes CUDA at import.
    Also exposes this repo as the package ``lora_lab`` (see ``ensure_lora_lab_importable``).
    """
    path = comfyui_path()
    if path is None:
        raise RuntimeError(why_unavailable() or "ComfyUI unavailable")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if "comfy.model_management" not in sys.modules:
        from comfy.cli_args import args

        args.cpu = cpu
    import comfy.model_management

    return comfy.model_management


def ensure_lora_lab_importable(link_dir: Path) -> None:
    """Make ``import lora_lab`` resolve to this checkout without pip (a symlink named lora_lab in link_dir)."""
    try:
        import lora_lab  # noqa: F401

        return
    except ImportError:
        pass
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "lora_lab"
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    sys.path.insert(0, str(link_dir))
