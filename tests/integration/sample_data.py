"""Tiny deterministic image/caption folders and latent-file readers for integration tests."""

from __future__ import annotations

from pathlib import Path

CAPTIONS = ["a red square", "a blue circle", "a green stripe", "a yellow dot"]


def make_image_folder(folder: Path, count: int = 4, size: int = 64, seed: int = 0,
                      captions: list[str] | None = None) -> Path:
    """count PNGs (size x size, smooth deterministic colour patterns) with a .txt caption beside each."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    captions = captions or CAPTIONS
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        freq = rng.uniform(1, 4, size=3)
        channels = [0.5 + 0.5 * np.sin(2 * np.pi * freq[c] * (xx + (c + 1) * yy) + phase[c]) for c in range(3)]
        pixels = (np.stack(channels, axis=-1) * 255).round().astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"img_{i:02d}.png")
        (folder / f"img_{i:02d}.txt").write_text(captions[i % len(captions)])
    return folder


def read_latent(path: Path):
    """The latent tensor of a SaveLatent file (.latent = safetensors with key latent_tensor)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if "latent_tensor" not in tensors:
        raise KeyError(f"{path} has no latent_tensor (keys: {sorted(tensors)})")
    return tensors["latent_tensor"]


def saved_latent(server, history: dict):
    """The one latent a prompt saved with SaveLatent."""
    files = [f for f in server.output_files(history) if f.suffix == ".latent"]
    assert len(files) == 1, f"expected one latent, got {files}"
    return read_latent(files[0])


def assert_latents_close(a, b, what: str, rel: float = 1e-3) -> None:
    """max |a - b| <= rel x max |a|: the criterion for 'the same image' (the README's latent comparisons)."""
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item()
    assert diff <= rel * scale, f"{what}: max abs diff {diff} > {rel} x {scale}"
