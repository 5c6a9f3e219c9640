"""A model stored in fp8 or bf16 and computed in fp32 (UNETLoader weight_dtype; ComfyUI casts every
weight in forward, the code path that partial loading takes on a GPU) trains with Train LoRA's defaults:
it learns, the in-graph MODEL and the saved file through the stock loader give the same latent, and resident
memory grows by far less than the model (no copy of it, no cast kept for backward).

The memory bound: resident memory grows by less than 10% of the stored model while training.
A copy of the stored model costs 1x its bytes, keeping every layer's fp32 cast for backward 2x (bf16) or 4x
(fp8), and even one whole cast of SD1.5's largest conv is 118 MB in fp32, 14% of the fp8 UNet (ComfyUI's
own inference forward casts it whole and grows by that much). Training casts each large layer a slice at
a time, in the checkpointed units' first pass too, so what it holds is the LoRA, its optimizer state,
small activations and one slice.

The memory is measured in a fresh process (cast_memory_probe.py): inside a long pytest process glibc keeps
what earlier tests freed and training reuses it without raising RSS (the January suite measured 0 MiB that
way), which would hide a copy of the model. The probe also fixes glibc's mmap threshold, so its peak counts
what is held rather than the allocator's history (January fp8, polling RSS around each step: +243 MiB with
the dynamic threshold, +190 MiB fixed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .comfy_inprocess import call_node, register_lora_lab_nodes
from .sample_data import make_image_folder
from .test_train_inprocess import _eval_loss

TRAIN = {
    "steps": 12, "learning_rate": 3e-3, "rank": 8, "alpha": 8.0, "target_preset": "attention", "batch_size": 1,
    "grad_accumulation": 1, "lr_schedule": "constant", "warmup_steps": 0, "timestep_sampling": "auto",
    "precision": "auto", "gradient_checkpointing": True, "seed": 0,
}


def _probe(checkpoint: Path, weight_dtype: str, work: Path) -> dict:
    import json
    import subprocess
    import sys

    probe = Path(__file__).with_name("cast_memory_probe.py")
    done = subprocess.run([sys.executable, str(probe), str(checkpoint), weight_dtype, str(work)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parts(comfy, sd15_checkpoint, tmp_path_factory):
    import comfy.sd
    import folder_paths

    register_lora_lab_nodes()
    loras = tmp_path_factory.mktemp("cast_loras")
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    _, clip, vae = comfy.sd.load_checkpoint_guess_config(str(sd15_checkpoint), output_vae=True, output_clip=True)[:3]
    images = make_image_folder(tmp_path_factory.mktemp("cast_images"), count=2, size=64)
    return clip, vae, images, loras


@pytest.mark.slow
@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "bf16"])
def test_cast_in_forward_model_trains_without_copying(parts, sd15_checkpoint, weight_dtype, tmp_path):
    import comfy.model_management
    import comfy.sd

    from lora_lab.lora_core.files.lora_file import save_lora_file

    clip, vae, images, loras = parts
    dtype = {"fp8_e4m3fn": torch.float8_e4m3fn, "bf16": torch.bfloat16}[weight_dtype]
    model = comfy.sd.load_diffusion_model(str(sd15_checkpoint), model_options={"dtype": dtype})
    layer = model.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1.to_q
    assert layer.weight.dtype == dtype and layer.comfy_cast_weights  # ComfyUI casts this weight in every forward
    model_bytes = sum(p.numel() * p.element_size() for p in model.model.diffusion_model.parameters())
    largest_cast = max(p.numel() * 4 for p in model.model.diffusion_model.parameters())
    dataset = call_node("LoraLabDataset", folder=str(images), resolution=64, trigger_word="", default_caption="")[0]
    memory = _probe(sd15_checkpoint, weight_dtype, tmp_path)
    growth, inference_growth = memory["growth"], memory["inference_growth"]
    print(f"\n{weight_dtype} (fresh process): model {model_bytes / 2**20:.0f} MiB, peak growth while training "
          f"{growth / 2**20:.0f} MiB ({growth / model_bytes:.1%}; largest single fp32 cast "
          f"{largest_cast / 2**20:.0f} MiB; the same forward without training grows {inference_growth / 2**20:.0f} MiB); "
          f"eval loss {memory['loss_before']:.4f} -> {memory['loss_after']:.4f}")
    assert memory["model_bytes"] == model_bytes and memory["loss_after"] < memory["loss_before"]
    assert growth < 0.10 * model_bytes  # no copy (1x), no kept casts (2-4x), no whole cast of a large layer

    comfy.model_management.load_models_gpu([model])
    before_loss = _eval_loss(model, dataset, vae, clip)
    trained, lora, loss, _clip = call_node("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=dataset,
                                           **dict(TRAIN, output_name=f"cast_{weight_dtype}"))[:4]
    after_loss = _eval_loss(trained, dataset, vae, clip)
    assert after_loss < before_loss
    assert lora.metadata["lora_lab_compute_dtype"] == "fp32"

    name = f"cast_{weight_dtype}.safetensors"
    save_lora_file(loras / name, lora.state_dict(), lora.metadata)
    reloaded = call_node("LoraLoaderModelOnly", model=model, lora_name=name, strength_model=1.0)[0]
    positive = call_node("CLIPTextEncode", text="a red square", clip=clip)[0]
    latent = call_node("EmptyLatentImage", width=64, height=64, batch_size=1)[0]

    def sample(m):
        return call_node("KSampler", model=m, seed=3, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal",
                         positive=positive, negative=positive, latent_image=latent, denoise=1.0)[0]["samples"]

    in_graph, from_file = sample(trained), sample(reloaded)
    assert (in_graph - from_file).abs().max() <= 1e-3 * in_graph.abs().max()
    assert layer.weight.dtype == dtype  # the shared model is exactly what it was


@pytest.mark.parametrize("grad", [True, False], ids=["backprop", "no_grad"])
def test_a_sliced_layer_honours_comfyui_cancel(comfy, grad):
    """The sliced path computes a layer without calling its forward, so it must run ComfyUI's per-op cancel check
    itself: a queue cancel set while a large bf16-stored layer runs stops it there."""
    import comfy.model_management
    import comfy.ops

    from lora_lab.lora_core.training.frozen_layers import _to_slice, frozen_base
    from lora_lab.nodes.comfy_backend import comfy_fetch, comfy_plain, comfy_stored

    layer = comfy.ops.manual_cast.Linear(2048, 2048, dtype=torch.bfloat16)  # 16 MiB once cast to fp32: two slices
    with torch.no_grad():  # comfy.ops layers skip initialisation
        layer.weight.normal_(std=2048 ** -0.5)
        layer.bias.normal_()
    x = torch.randn(3, 2048, requires_grad=grad)
    assert _to_slice(layer, x, comfy_stored(layer, x)) is not None  # the call below takes the sliced path
    with frozen_base(layer, comfy_fetch, comfy_plain, comfy_stored), torch.set_grad_enabled(grad):
        assert torch.allclose(layer(x), x @ layer.weight.float().t() + layer.bias.float(), atol=1e-5)
        comfy.model_management.interrupt_current_processing(True)
        try:
            with pytest.raises(comfy.model_management.InterruptProcessingException):
                layer(x)
        finally:
            comfy.model_management.interrupt_current_processing(False)
