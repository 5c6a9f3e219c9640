"""Test-only ComfyUI node for the browser tests (never shipped with the pack).

LoraLabTestEvents sends LoRA Lab's live events for node `node_id`, from the server:
- step_seconds = 0: `count` lora_lab.progress messages straight away, unthrottled, one step each (built by the
  pack's own progress_payload), the way a misbehaving or very fast producer would; then optionally one
  lora_lab.sample.
- step_seconds > 0: a slow fake training run that reports like Train LoRA does (the pack's ProgressStream and
  run log), one step every step_seconds, until `count` or the user cancels.
"""

import math
import sys


def _pack_module(name: str):
    """A module of the pack (e.g. "nodes.progress_events"), as ComfyUI imported it (under a path-derived name)."""
    for full_name, module in list(sys.modules.items()):
        if full_name.endswith("." + name) and module is not None:
            return module
    raise RuntimeError(f"LoRA Lab's {name} is not loaded")


class _Step:
    def __init__(self, step, total):
        self.step, self.total = step, total
        self.loss = 1.0 / math.sqrt(step) + 0.05 * math.sin(step)
        self.lr = 1e-4 * min(1.0, step / 100)
        self.val_loss = self.loss * 1.1 if step % 1000 == 0 else None


class LoraLabTestEvents:
    CATEGORY = "LoRA Lab/testing"
    FUNCTION = "send"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "node_id": ("STRING", {"default": "11", "tooltip": "The Train LoRA node the events are for."}),
            "count": ("INT", {"default": 10000, "min": 0, "max": 1_000_000}),
            "sample_step": ("INT", {"default": 0, "min": 0, "tooltip": "0: no sample; else one lora_lab.sample."}),
            "nonce": ("INT", {"default": 0, "min": 0, "tooltip": "Change to re-run (ComfyUI caches outputs)."}),
            "step_seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 60.0, "step": 0.01}),
        }}

    def send(self, node_id, count, sample_step, nonce, step_seconds=0.0):
        from server import PromptServer

        events = _pack_module("nodes.progress_events")
        server = PromptServer.instance
        prompt_id = events.running_prompt_id(server)
        send = events.server_sender(server)
        if step_seconds > 0:
            return self._slow_run(events, server, prompt_id, node_id, count, step_seconds)
        for step in range(1, count + 1):
            send(events.PROGRESS_EVENT, events.progress_payload(_Step(step, count), node_id, prompt_id,
                                                                elapsed=step * 1e-4))
        if sample_step:
            import torch

            image = torch.linspace(0, 1, 64 * 64 * 3).reshape(64, 64, 3)
            events.send_sample(image, sample_step, node_id, prompt_id)
        return ()

    @staticmethod
    def _slow_run(events, server, prompt_id, node_id, count, step_seconds):
        import time

        import comfy.model_management

        log = _pack_module("nodes.progress_log").RUN_LOG
        stream = events.ProgressStream(node_id, prompt_id, events.server_sender(server),
                                       on_point=log.start(prompt_id, node_id, count))
        for step in range(1, count + 1):
            time.sleep(step_seconds)
            stream.report(_Step(step, count))
            comfy.model_management.throw_exception_if_processing_interrupted()
        return ()


NODE_CLASS_MAPPINGS = {"LoraLabTestEvents": LoraLabTestEvents}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabTestEvents": "LoRA Lab test events"}
