"""Test-only ComfyUI custom nodes for LoRA Lab's integration tests (never shipped with the pack).

LoraLabTestConditioning: a CONDITIONING of any width without a real text encoder, deterministic in
(seed, text) - different captions give different conditionings. For flow models whose real encoder (T5)
is too large to build here; the harness' default for Flux/SD3 is still a real CLIP-L via CLIPLoader.

LoraLabTestVisionClip: a random small vision-language text encoder of a real architecture (ComfyUI's Qwen3-VL
classes, vision_clip.py), for Caption Images; an error on ComfyUI versions that have none.
"""

import hashlib

import torch


class LoraLabTestConditioning:
    CATEGORY = "LoRA Lab/testing"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"default": "", "tooltip": "Hashed into the seed."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
            "length": ("INT", {"default": 77, "min": 1, "max": 4096, "tooltip": "Token count L."}),
            "width": ("INT", {"default": 4096, "min": 1, "max": 16384, "tooltip": "Context width."}),
            "pooled_width": ("INT", {"default": 768, "min": 0, "max": 16384, "tooltip": "0: no pooled_output."}),
            "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "tooltip": "Flux guidance."}),
        }}

    def encode(self, text, seed, length, width, pooled_width, guidance):
        digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        cond = torch.randn((1, length, width), generator=generator)
        extra = {"guidance": guidance}
        if pooled_width:
            extra["pooled_output"] = torch.randn((1, pooled_width), generator=generator)
        return ([[cond, extra]],)


class LoraLabTestVisionClip:
    CATEGORY = "LoRA Lab/testing"
    FUNCTION = "build"
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1234, "min": 0, "max": 2**31 - 1})}}

    def build(self, seed):
        from .vision_clip import tiny_vision_clip

        return (tiny_vision_clip(seed),)


NODE_CLASS_MAPPINGS = {"LoraLabTestConditioning": LoraLabTestConditioning, "LoraLabTestVisionClip": LoraLabTestVisionClip}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabTestConditioning": "LoRA Lab test conditioning",
                              "LoraLabTestVisionClip": "LoRA Lab test vision-language CLIP"}
