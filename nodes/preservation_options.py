"""LoRA Lab Preservation: Train LoRA's option group for keeping what the model knew (training/preservation.py).

Differential output preservation trains, beside each batch, the batch's captions with the trigger replaced by a
class word toward the model's own prediction with the LoRA off; blank-prompt preservation does the same with
the empty caption. Regularisation datasets are marked with 'Regularisation Dataset' and mixed in with
'Combine Datasets' (nodes/dataset_mix_nodes.py).
"""

from __future__ import annotations

from comfy_api.latest import io

from ..lora_core.errors import TrainingError
from .types import PRESERVATION_OPTIONS


class PreservationOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabPreservationOptions", display_name="LoRA Lab Preservation", category="LoRA Lab/options",
            description="Keep what the model knew: with each batch, also train its captions with the trigger replaced "
                        "by a class word (differential output preservation) and/or the empty caption toward the "
                        "model's own prediction with the LoRA off. One extra forward without grad and one more "
                        "forward and backward per term per batch. Needs Train LoRA's clip input.",
            inputs=[
                io.Boolean.Input("differential_output_preservation", default=True,
                                 tooltip="The caption with the trigger word replaced by class_word should give what "
                                         "the model gave before: the LoRA learns the trigger, not the class."),
                io.String.Input("class_word", default="",
                                tooltip="Replaces the trigger word (e.g. 'woman', 'dog', 'painting'). Empty: the "
                                        "trigger word is removed from the caption."),
                io.Float.Input("dop_multiplier", default=1.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of the preservation loss beside the training loss."),
                io.String.Input("trigger_word", default="",
                                tooltip="The word to replace; empty: each dataset's own trigger word."),
                io.Boolean.Input("blank_prompt_preservation", default=False,
                                 tooltip="The empty caption (what unconditional sampling and CFG use) should give "
                                         "what the model gave before."),
                io.Float.Input("blank_prompt_multiplier", default=1.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of the blank-prompt loss."),
            ],
            outputs=[PRESERVATION_OPTIONS.Output(display_name="preservation")],
        )

    @classmethod
    def execute(cls, differential_output_preservation, class_word, dop_multiplier, trigger_word,
                blank_prompt_preservation, blank_prompt_multiplier) -> io.NodeOutput:
        options = {}
        if differential_output_preservation and dop_multiplier > 0:
            options["dop"] = {"multiplier": float(dop_multiplier), "class_word": class_word.strip(),
                              "trigger_word": trigger_word.strip()}
        if blank_prompt_preservation and blank_prompt_multiplier > 0:
            options["blank_prompt"] = {"multiplier": float(blank_prompt_multiplier)}
        if not options:
            raise TrainingError("LoRA Lab Preservation: turn on differential output preservation or blank-prompt "
                                "preservation (with a multiplier above 0), or disconnect the node")
        return io.NodeOutput(options)
