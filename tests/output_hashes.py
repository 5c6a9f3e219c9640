"""sha256 of what the pack writes for fixed inputs and seeds on the CPU, to show a refactor changed no byte.

    python tests/output_hashes.py OUT.json                 demo, `lora-lab train` (LoRA + state), `lora-lab convert`
    COMFYUI_PATH=... <ComfyUI's python> tests/output_hashes.py OUT.json --comfyui
                                                           Train LoRA + Save LoRA in that ComfyUI, in this process

Run it before and after the change and compare the two files. It uses only the command line and the
integration harness, so it runs unchanged on both sides of a change that moves modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "examples" / "tiny_dataset"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lora_lab(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "SOURCE_DATE_EPOCH": "1700000000"}
    subprocess.run([sys.executable, "-m", "lora_lab", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def tiny_pipeline(folder: Path) -> Path:
    code = ("import sys; from pathlib import Path\n"
            "try:\n    from tiny_folders import make_tiny_pipeline\n"
            "except ImportError:\n    sys.path.insert(0, sys.argv[2]); from tiny_folders import make_tiny_pipeline\n"
            "make_tiny_pipeline(Path(sys.argv[1]), 'sd15')")
    subprocess.run([sys.executable, "-c", code, str(folder), str(REPO / "tests")], check=True)
    return folder


def cli_outputs(work: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    lora_lab("demo", "--out", str(work / "demo"), "--steps", "8")
    for path in sorted((work / "demo").glob("*.safetensors")):
        out[f"demo/{path.name}"] = sha256(path)

    model = tiny_pipeline(work / "sd15")
    config = work / "run.toml"
    config.write_text(f"""[model]
path = {json.dumps(str(model))}
text_encoder = "hashed"
[data]
path = {json.dumps(str(DATASET))}
resolution = 64
trigger_word = "rcircle"
[train]
steps = 3
batch_size = 2
rank = 4
alpha = 4.0
learning_rate = 1e-2
targets = "attention_mlp"
seed = 0
[output]
dir = {json.dumps(str(work / "train"))}
formats = ["comfyui", "diffusers"]
loss_plot = false
""")
    lora_lab("train", str(config))
    for path in sorted((work / "train").iterdir()):
        if path.suffix in (".safetensors", ".state"):
            out[f"train/{path.name}"] = sha256(path)

    source = work / "train" / "lora.diffusers.safetensors"
    lora_lab("convert", str(source), str(work / "converted.safetensors"), "--to", "comfyui", "--arch", "sd15")
    lora_lab("convert", str(work / "demo" / next(p.name for p in sorted((work / "demo").glob("*.safetensors")))),
             str(work / "demo_diffusers.safetensors"), "--to", "diffusers", "--arch", "sd15")
    for name in ("converted.safetensors", "demo_diffusers.safetensors"):
        out[f"convert/{name}"] = sha256(work / name)
    return out


def comfyui_outputs(work: Path) -> dict[str, str]:
    """Train LoRA (defaults, 3 steps, fixed seed) on the harness' random SD1.5, saved by Save LoRA."""
    sys.path.insert(0, str(REPO / "tests"))
    from integration.comfy_env import ensure_lora_lab_importable, import_comfy

    import_comfy()
    ensure_lora_lab_importable(work / "link")
    import folder_paths

    from integration.comfy_inprocess import call_node, load_checkpoint, register_lora_lab_nodes
    from integration.comfy_models import default_cache_dir, ensure_model
    from integration.sample_data import make_image_folder

    register_lora_lab_nodes()
    for setter in ("set_input_directory", "set_user_directory"):
        getattr(folder_paths, setter)(str(work))
    loras = work / "loras"
    loras.mkdir()
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    model, clip, vae = load_checkpoint(ensure_model("sd15", default_cache_dir()))
    images = make_image_folder(work / "images", count=3, size=64)
    dataset = call_node("LoraLabDataset", folder=str(images), resolution=64, trigger_word="sks", default_caption="",
                        cache_folder="")[0]
    trained = call_node("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=dataset, steps=3, learning_rate=1e-3,
                        rank=4, alpha=4.0, target_preset="attention", batch_size=1, grad_accumulation=1,
                        lr_schedule="constant", warmup_steps=0, timestep_sampling="auto", precision="auto",
                        gradient_checkpointing=True, seed=5, output_name="hashes", save_every=2)
    call_node("LoraLabSaveLora", lora=trained[1], name="hashes")
    return {f"comfyui/{p.name}": sha256(p) for p in sorted(loras.iterdir()) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--comfyui", action="store_true", help="the Train LoRA node in $COMFYUI_PATH instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hashes = comfyui_outputs(Path(tmp)) if args.comfyui else cli_outputs(Path(tmp))
    args.out.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    print(json.dumps(hashes, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
