"""The conversion nodes in a real ComfyUI server: Convert LoRA writes a diffusers file, Inspect LoRA describes it,
and Load LoRA applies the diffusers file (converted in memory) exactly as the stock LoraLoader applies the
original kohya file."""

from __future__ import annotations

from safetensors import safe_open

from .comfy_models import write_kohya_lora
from .sample_data import assert_latents_close, saved_latent
from .workflows import Graph, checkpoint_sample_workflow, load_lora_sample_workflow



def _texts(history: dict) -> list[str]:
    """Every PreviewText string a prompt's nodes showed in the UI."""
    out = []
    for node_output in history.get("outputs", {}).values():
        for value in node_output.get("text", []):
            out.append(value if isinstance(value, str) else str(value))
    return out


def test_convert_inspect_and_load_a_diffusers_lora(comfy_server, sd15_checkpoint, loras_dir):
    ckpt = sd15_checkpoint.name
    modules = write_kohya_lora(sd15_checkpoint, loras_dir / "kohya_original.safetensors", pattern="_attn", seed=21)

    g = Graph()
    g.add("LoraLabConvertLora", lora_name="kohya_original.safetensors", to="diffusers",
          output_name="as_diffusers", arch="auto", dtype="keep", strict=True)
    history = comfy_server.run(g.api(), timeout=600)
    converted = loras_dir / "as_diffusers.safetensors"
    assert converted.is_file(), list(loras_dir.iterdir())
    with safe_open(str(converted), "pt") as handle:
        keys, meta = list(handle.keys()), handle.metadata()
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys), keys[:4]
    assert len(keys) == 2 * len(modules) and "lora_adapter_metadata" in meta
    assert any("as_diffusers" in text for text in _texts(history)), _texts(history)

    g = Graph()
    g.add("LoraLabInspectLora", lora_name="as_diffusers.safetensors")
    report = "\n".join(_texts(comfy_server.run(g.api(), timeout=600)))
    assert "sd15" in report.lower() and "diffusers" in report.lower(), report

    mark = comfy_server.log_mark()
    ours = saved_latent(comfy_server, comfy_server.run(load_lora_sample_workflow(
        ckpt, "as_diffusers.safetensors", load_inputs={"strength_model": 0.8, "strength_clip": 0.8},
        filename_prefix="latents/convert_ours"), timeout=900))
    stock = saved_latent(comfy_server, comfy_server.run(checkpoint_sample_workflow(
        ckpt, lora=("kohya_original.safetensors", 0.8, 0.8), filename_prefix="latents/convert_stock"), timeout=900))
    base = saved_latent(comfy_server, comfy_server.run(checkpoint_sample_workflow(
        ckpt, filename_prefix="latents/convert_base"), timeout=900))
    log = comfy_server.log_since(mark)
    assert "lora key not loaded" not in log, log[-4000:]
    assert_latents_close(stock, ours, "Load LoRA (diffusers file) vs stock LoraLoader (kohya file)")
    assert (ours - base).abs().max().item() > 1e-3, "the LoRA had no effect"
