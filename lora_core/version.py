"""The pack's version, in one place: the package root, the LoRA metadata and pyproject.toml (checked by a test) read it."""

__version__ = "0.1.0"
