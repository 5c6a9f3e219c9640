"""Calibrates lora_core/training/memory_estimate.py: activation bytes a training step keeps for backward, against
ComfyUI's own inference estimate (ModelPatcher.memory_required) for the same batch, on the random full SD1.5.

Saved bytes are summed over the distinct storages autograd keeps in one forward (saved-tensor hooks), with the
same wrappers Train LoRA uses. Without checkpointing the in-place guard is off (SD1.5 writes no block input in
place), since its own hook would hide the saves from the measuring one.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python bench/training_memory.py [--sizes 64 128 256] [--batches 1 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.comfy_env import ensure_lora_lab_importable, import_comfy  # noqa: E402
from tests.integration.comfy_models import ensure_model  # noqa: E402


def saved_bytes(backend, adapters, latent, cond, checkpointing: bool) -> int:
    import torch

    from lora_lab.lora_core.training.checkpointing import gradient_checkpointing
    from lora_lab.lora_core.training.frozen_layers import frozen_base
    from lora_lab.lora_core.adapters.injection import attached
    from lora_lab.lora_core.training.objective import diffusion_loss

    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    modules = dict(backend.root.named_modules())
    with torch.inference_mode(False), torch.enable_grad():
        with frozen_base(backend.root, backend.fetch_weight, backend.is_plain, backend.stored_weights), \
                attached(backend.root, adapters), \
                gradient_checkpointing(backend.root, checkpointing, checkpointing, adapted=[modules[n] for n in adapters]):
            batch = latent.shape[0]
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = diffusion_loss(backend, latent, torch.randn_like(latent), torch.full((batch,), 0.5), [cond] * batch)
            loss.mean().backward()
    return sum(storages.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import_comfy()
    ensure_lora_lab_importable(Path(tempfile.mkdtemp(prefix="lora_lab_bench_link_")))
    import comfy.model_management
    import comfy.sd
    import torch

    from lora_lab.lora_core.adapters.algorithms import new_adapter
    from lora_lab.lora_core.adapters.targets import select_targets
    from lora_lab.nodes.comfy_backend import ComfyBackend, encode_sample_cond

    patcher, clip = comfy.sd.load_checkpoint_guess_config(str(ensure_model("sd15")), output_vae=False)[:2]
    comfy.model_management.load_models_gpu([patcher])
    backend = ComfyBackend(patcher)
    modules = dict(backend.root.named_modules())
    gen = torch.Generator().manual_seed(0)
    adapters = {n: new_adapter(modules[n], 4, 4.0, 0.0, gen) for n in select_targets(backend.root, "attention")}
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize("a photo"))
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            shape = (batch, 4, size // 8, size // 8)
            with torch.inference_mode(False):
                latent = torch.randn(shape)
                cond = encode_sample_cond(patcher, [[c.clone() for c in conditioning[0][:1]] + [conditioning[0][1]]],
                                          latent[0], 0)
                estimate = patcher.memory_required(shape)
                row = {"size": size, "batch": batch, "inference_estimate_mb": estimate / 2**20}
                for ckpt in (False, True):
                    kept = saved_bytes(backend, adapters, latent, cond, ckpt)
                    row[f"kept_mb_{'ckpt' if ckpt else 'full'}"] = kept / 2**20
                    row[f"factor_{'ckpt' if ckpt else 'full'}"] = kept / estimate
            rows.append(row)
            print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"comfyui": os.environ.get("COMFYUI_PATH"), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
