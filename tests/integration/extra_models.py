"""city96/ComfyUI_ExtraModels for the Sana test: its checkout, its Python dependencies, and random-weight files
in the layouts its own loaders read (SanaMS 600M, DC-AE f32c32). Nothing of ExtraModels is committed here.

Where the checkout comes from: $LORA_LAB_EXTRAMODELS (a ComfyUI_ExtraModels folder), else a bare git mirror at
$LORA_LAB_EXTRAMODELS_GIT laid out blob by blob; with neither, the Sana test skips and says so.
ExtraModels imports timm at load (its README says `pip install -r requirements.txt`); give it through
$LORA_LAB_EXTRA_PYTHONPATH when ComfyUI's environment lacks it.

    python -m tests.integration.extra_models build sana|dcae OUT.safetensors CHECKOUT    (run with ComfyUI's python)
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = "ComfyUI_ExtraModels"
SANA_CONF = "SanaMS_600M_P1_D28"
DCAE_CONF = "dcae-f32c32-sana-1.0"
SEED = 1234


def checkout(dest_parent: Path) -> Path | None:
    """A ComfyUI_ExtraModels folder (dest_parent/ComfyUI_ExtraModels, laid out once), or None when none is available."""
    given = os.environ.get("LORA_LAB_EXTRAMODELS", "").strip()
    if given:
        return Path(given) if (Path(given) / "Sana").is_dir() else None
    git_dir = os.environ.get("LORA_LAB_EXTRAMODELS_GIT", "").strip()
    if not git_dir or not Path(git_dir).is_dir():
        return None
    dest = dest_parent / PACKAGE
    if not (dest / "__init__.py").is_file():
        _lay_out(git_dir, dest)
    return dest


def _lay_out(git_dir: str, dest: Path) -> None:
    """Blob by blob (a mirror may lack a few large blobs, e.g. tokenizer models: skipped), __init__.py last."""
    listing = subprocess.run(["git", "--git-dir", git_dir, "ls-tree", "-r", "-z", "HEAD"], capture_output=True,
                             check=True).stdout.decode()
    entries = [line.split("\t", 1) for line in listing.split("\0") if line]
    entries.sort(key=lambda e: e[1] == "__init__.py")  # its presence marks a complete lay-out
    for meta, path in entries:
        _mode, kind, obj = meta.split()
        if kind != "blob":
            continue
        blob = subprocess.run(["git", "--git-dir", git_dir, "cat-file", "blob", obj], capture_output=True)
        if blob.returncode == 0:
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            (dest / path).write_bytes(blob.stdout)


def extra_pythonpath() -> list[str]:
    raw = os.environ.get("LORA_LAB_EXTRA_PYTHONPATH", "").strip()
    return [p for p in raw.split(os.pathsep) if p]


def missing_dependency(python: str) -> str | None:
    """Why ExtraModels cannot load in that python (a module it imports is missing), or None."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(extra_pythonpath() + [os.environ.get("PYTHONPATH", "")]))
    probe = subprocess.run([python, "-c", "import timm, einops, sentencepiece, transformers"], env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return ("ComfyUI_ExtraModels needs timm/einops/sentencepiece/transformers in ComfyUI's python "
                f"(pip install timm, or point LORA_LAB_EXTRA_PYTHONPATH at a folder holding them): {probe.stderr.strip()[-200:]}")
    return None


def build(kind: str, out: Path, package: Path, seed: int = SEED) -> None:
    """Write random weights of ExtraModels' own class for `kind` (fp16, its original key names)."""
    import torch
    from safetensors.torch import save_file

    comfy_root = os.environ["COMFYUI_PATH"]  # ExtraModels imports comfy (and, as a package, ComfyUI's nodes)
    sys.path.insert(0, comfy_root)
    from comfy.cli_args import args

    args.cpu = True
    sys.path.insert(0, str(package.parent))
    for extra in extra_pythonpath():
        sys.path.insert(0, extra)
    if kind == "sana":
        from ComfyUI_ExtraModels.Sana.conf import sana_conf
        from ComfyUI_ExtraModels.Sana.models.sana_multi_scale import SanaMS

        # built on the meta device (shapes only); its drop-path schedule calls .item() on a linspace
        linspace = torch.linspace
        torch.linspace = lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})
        try:
            with torch.device("meta"):
                model = SanaMS(**sana_conf[SANA_CONF]["unet_config"])
        finally:
            torch.linspace = linspace
    elif kind == "dcae":
        from ComfyUI_ExtraModels.VAE.conf import vae_conf
        from ComfyUI_ExtraModels.VAE.models.dcae import DCAE

        with torch.device("meta"):
            model = DCAE(**vae_conf[DCAE_CONF])
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, t in sorted(list(model.state_dict().items())):
        if not t.is_floating_point():
            continue
        if name.endswith("bias"):
            value = torch.zeros(t.shape)
        elif t.dim() >= 2:
            value = torch.randn(t.shape, generator=generator) / math.sqrt(math.prod(t.shape[1:]))
        else:
            value = torch.ones(t.shape)
        tensors[name] = value.to(torch.float16).contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"lora_lab_test_model": kind, "seed": str(seed)})
    os.replace(tmp, out)


def ensure(kind: str, cache_dir: Path, package: Path, python: str, timeout: float = 1800) -> Path:
    """The cached random-weight file for `kind`, built in a child process (ComfyUI's python) when missing."""
    import fcntl

    out = cache_dir / "extra_models" / f"{kind}.safetensors"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{kind}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(extra_pythonpath()))  # COMFYUI_PATH is inherited
            proc = subprocess.run([python, str(Path(__file__).resolve()), "build", kind, str(out), str(package)],
                                  env=env, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"building {kind} failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "build":
        raise SystemExit(__doc__)
    build(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
