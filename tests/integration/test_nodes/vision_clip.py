"""A random small vision-language text encoder of a real architecture, for captioning tests.

ComfyUI's own Qwen3-VL classes (comfy/text_encoders/qwen3vl.py, the "qwen3vl_4b" layout that CLIPLoader detects
for Qwen3-VL-4B) with the language model cut to 3 layers of width 64 through the config override ComfyUI's text
encoders read from model_options ("<name>_model_config"); the vision tower keeps its real size (24 blocks,
width 1024, about 300M parameters: ComfyUI offers no override for it). Built in memory, in fp32, every tensor
filled from a seed as tests/integration/comfy_models.py fills its models (same rule, same function), so the same
seed gives the same encoder in the test process and in a test server. ComfyUI versions without Qwen3-VL (or
without text generation) have none: tiny_vision_clip raises ImportError there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MODEL_TYPE = "qwen3vl_4b"
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                   num_key_value_heads=1)


def _fill_random():
    """comfy_models.fill_random_, loaded by path: a test server imports this package without tests/integration."""
    path = Path(__file__).resolve().parents[1] / "comfy_models.py"
    spec = importlib.util.spec_from_file_location("lora_lab_test_comfy_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fill_random_


def tiny_vision_clip(seed: int = 1234):
    """A comfy.sd.CLIP that ComfyUI's TextGenerate can caption images with (random weights: random words)."""
    import torch

    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.qwen3vl as qwen3vl  # ImportError where this ComfyUI has no Qwen3-VL

    if not hasattr(comfy.sd.CLIP, "generate"):
        raise ImportError("this ComfyUI's CLIP cannot generate text")
    target = comfy.supported_models_base.ClipTarget(qwen3vl.tokenizer(model_type=MODEL_TYPE), qwen3vl.te(model_type=MODEL_TYPE))
    clip = comfy.sd.CLIP(target, model_options={f"{MODEL_TYPE}_model_config": dict(TEXT_CONFIG), "dtype": torch.float32})
    _fill_random()(clip.cond_stage_model, seed)
    return clip
