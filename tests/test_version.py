"""The version lives in lora_core/version.py; the package root and every LoRA's metadata read it from there, and
pyproject.toml (which ComfyUI's registry and pip read, and cannot import it) must say the same."""

import sys

from lora_lab import __version__ as package_version
from lora_lab.lora_core.files.lora_file import training_metadata
from lora_lab.lora_core.version import __version__

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_one_version_everywhere():
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    meta = training_metadata(family="sd15", rank=1, alpha=1, learning_rate=1e-4, max_steps=1, steps_done=1,
                             num_images=1)
    assert package_version == __version__ == pyproject["project"]["version"] == meta["lora_lab_version"]
