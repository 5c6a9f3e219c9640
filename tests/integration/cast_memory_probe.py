"""Child process of test_train_cast_weights: peak RSS growth of ComfyUI's own forward and of one Train LoRA
run on a cast-in-forward SD1.5, measured in a fresh process.

Why a fresh process: inside a long pytest process, glibc keeps the memory earlier tests freed, and training
reuses it without raising RSS (the January suite measured 0 MiB this way), so an in-process peak can hide a
copy of the model. Here the only history is this script's. glibc's mmap threshold is fixed first (it would
otherwise rise to the size of each freed block, and freed blocks under it would stay resident), so the peak
is what is held.

usage: python cast_memory_probe.py <sd15 checkpoint> <fp8_e4m3fn|bf16> <work dir>   (prints one JSON line)
"""

from __future__ import annotations

import ctypes
import json
import platform
import sys
from pathlib import Path

if platform.libc_ver()[0] == "glibc":
    ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: blocks of 1 MiB or more are mmapped, always

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the integration helpers

from peak_rss import peak_growth  # noqa: E402


def main(checkpoint: str, weight_dtype: str, work: str) -> dict:
    from integration.comfy_env import ensure_lora_lab_importable, import_comfy

    work_dir = Path(work)
    import_comfy()
    ensure_lora_lab_importable(work_dir / "link")
    import torch

    import comfy.model_management
    import comfy.sd

    from integration.comfy_inprocess import call_node, register_lora_lab_nodes, use_input_and_user_dirs
    from integration.sample_data import make_image_folder
    from integration.test_train_cast_weights import TRAIN
    from integration.test_train_inprocess import _eval_loss

    register_lora_lab_nodes()
    use_input_and_user_dirs(work_dir)
    dtype = {"fp8_e4m3fn": torch.float8_e4m3fn, "bf16": torch.bfloat16}[weight_dtype]
    _, clip, vae = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)[:3]
    model = comfy.sd.load_diffusion_model(checkpoint, model_options={"dtype": dtype})
    params = list(model.model.diffusion_model.parameters())
    images = make_image_folder(work_dir / "images", count=2, size=64)
    dataset = call_node("LoraLabDataset", folder=str(images), resolution=64, trigger_word="", default_caption="")[0]
    comfy.model_management.load_models_gpu([model])
    _eval_loss(model, dataset, vae, clip)  # first call: encoders loaded, caches warm
    import diffusers.optimization  # noqa: F401  Train LoRA's first call imports it (get_scheduler): library, once

    inference, before = peak_growth(lambda: _eval_loss(model, dataset, vae, clip))
    training, outputs = peak_growth(lambda: call_node(
        "LoraLabTrain", model=model, clip=clip, vae=vae, dataset=dataset, **dict(TRAIN, output_name="probe")))
    after = _eval_loss(outputs[0], dataset, vae, clip)
    return {"model_bytes": sum(p.numel() * p.element_size() for p in params),
            "largest_cast": max(p.numel() * 4 for p in params),
            "inference_growth": inference, "growth": training, "loss_before": before, "loss_after": after}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
