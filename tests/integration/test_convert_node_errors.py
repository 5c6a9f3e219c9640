"""Load LoRA, Convert LoRA and Inspect LoRA in a real ComfyUI server, given files that are not usable LoRAs: each
fails with a message that names the file and the problem in our words - never a library's raw message, never the
advice to load with weights_only=False - and the code inside a pickle never runs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from .comfy_server import PromptFailed
from .workflows import Graph

RAW_MESSAGES = ("weights_only", "Weights only load failed", "SafetensorError", "invalid header", "header too small",
                "HeaderTooSmall", "HeaderTooLarge", "UnpicklingError", "Expecting value")


class _Payload:
    def __reduce__(self):
        return (print, ("LORA_LAB_PWNED",))


def _flux_lora(path):
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 3072),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(9216, 4) * 0.01,
               "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(4.0)}, path)


def _truncated(path):
    _flux_lora(path)
    path.write_bytes(path.read_bytes()[:4096])


BAD = {  # file name -> (writer, words the message must contain)
    "lab_truncated.safetensors": (_truncated, "truncated"),
    "lab_empty.safetensors": (lambda p: p.write_bytes(b""), "empty"),
    "lab_evil.ckpt": (lambda p: torch.save({"x": _Payload()}, p), "never runs code"),
    "lab_not_a_lora.safetensors": (lambda p: save_file({f"model.diffusion_model.input_blocks.{i}.0.weight":
                                                        torch.randn(4, 4) for i in range(8)}, p), "not a LoRA"),
}


@pytest.fixture(scope="module")
def bad_loras(loras_dir):
    for name, (write, _) in BAD.items():
        write(loras_dir / name)
    _flux_lora(loras_dir / "lab_flux_lora.safetensors")
    return loras_dir


def _error(comfy_server, graph: Graph) -> str:
    with pytest.raises(PromptFailed) as failed:
        comfy_server.run(graph.api(), timeout=600)
    return str(failed.value)


def _load_graph(ckpt: str, lora_name: str) -> Graph:
    g = Graph()
    ckpt_node = g.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    loaded = g.add("LoraLabLoadLora", model=ckpt_node[0], clip=ckpt_node[1], lora_name=lora_name,
                   strength_model=1.0, strength_clip=1.0)
    g.add("PreviewAny", source=loaded[2])
    return g


def _convert_graph(lora_name: str, arch: str = "auto") -> Graph:
    g = Graph()
    g.add("LoraLabConvertLora", lora_name=lora_name, to="diffusers", output_name="", arch=arch, dtype="keep",
          strict=False)
    return g


def _inspect_graph(lora_name: str) -> Graph:
    g = Graph()
    g.add("LoraLabInspectLora", lora_name=lora_name)
    return g


def _assert_clear(message: str, name: str, words: str) -> None:
    assert name in message and words in message, message[:2000]
    first = message.split("\n")[0]  # the message the UI shows (the traceback follows it in the log)
    assert not any(raw in first for raw in RAW_MESSAGES), first


@pytest.mark.parametrize("name", sorted(BAD))
def test_nodes_name_the_file_and_the_problem(comfy_server, bad_loras, sd15_checkpoint, name):
    _, words = BAD[name]
    for graph in (_load_graph(sd15_checkpoint.name, name), _convert_graph(name), _inspect_graph(name)):
        _assert_clear(_error(comfy_server, graph), name, words)
    assert "LORA_LAB_PWNED" not in comfy_server.log_text()


def test_a_lora_for_another_model(comfy_server, bad_loras, sd15_checkpoint):
    """Load LoRA with a Flux LoRA on SD1.5; Convert LoRA told it is an SD1.5 LoRA."""
    message = _error(comfy_server, _load_graph(sd15_checkpoint.name, "lab_flux_lora.safetensors"))
    # one double-block module: Flux, HunyuanVideo, Chroma and Flux 2 all have it, so every candidate is named
    _assert_clear(message, "lab_flux_lora.safetensors", "a flux/hunyuan_video/chroma/flux2 LoRA for another model")
    message = _error(comfy_server, _convert_graph("lab_flux_lora.safetensors", arch="sd15"))
    _assert_clear(message, "lab_flux_lora.safetensors", "nothing to write")
